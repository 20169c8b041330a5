# shellcheck shell=bash
# Shared helpers for test/infra/<server>/up.sh and down.sh. Sourced, never run.
#
# The model: a server's jars live in a version-keyed cache
# ($SB_CACHE/<name>-<version>/lib, fetched once with Maven), and its state lives in
# $SB_CACHE/run/<name>/ (config, data, server.pid, server.log). The JVM runs
# detached in its own session so it outlives the script (and the test runner's
# process group), and is found again through the pid file.
#
# The caller sets SB_NAME (e.g. "kafka") before sourcing, and calls sb_init.

SB_CACHE="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}"

sb_log() { printf '[%s] %s\n' "$SB_NAME" "$*" >&2; }
sb_die() {
  printf '[%s] ERROR: %s\n' "$SB_NAME" "$*" >&2
  exit 1
}

# Sets the paths every script uses and makes the state directory.
sb_init() {
  SB_RUN="$SB_CACHE/run/$SB_NAME"
  SB_PID_FILE="$SB_RUN/server.pid"
  SB_LOG_FILE="$SB_RUN/server.log"
  # Passed to the JVM as -Dswitchboard.infra=...: lets us tell our own server from
  # an unrelated process that happens to have been given the same pid later.
  SB_MARKER="-Dswitchboard.infra=$SB_RUN"
  mkdir -p "$SB_RUN"
}

# Holds an exclusive lock for the rest of the calling script, so two test workers
# calling up.sh at once do not both download or both start a server.
# fd 9 must not leak into the server (sb_start closes it), or the lock would be
# held for the server's whole life.
sb_lock() {
  exec 9>"$SB_RUN/lock"
  if ! flock -w 900 9; then sb_die "timed out waiting for $SB_RUN/lock (another up.sh stuck?)"; fi
}

# --- prerequisites -------------------------------------------------------------

# Picks the java binary (JAVA_HOME first, like the upstream scripts) and checks that
# its major version is one of the allowed ones, e.g. sb_require_java 11 17.
sb_require_java() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    SB_JAVA="$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    SB_JAVA="$(command -v java)"
  else
    sb_die "java not found (neither \$JAVA_HOME/bin/java nor java on PATH). Install a JDK 17, e.g. apt-get install openjdk-17-jdk-headless"
  fi
  local line major
  line="$("$SB_JAVA" -version 2>&1 | head -n 1)"
  # 'openjdk version "17.0.15" ...' -> 17; 'java version "1.8.0_..."' -> 1
  major="$(printf '%s' "$line" | sed -E 's/^[^"]*"([0-9]+).*/\1/')"
  # The full version keys the class-data archive (sb_cds_opts): a JDK update
  # invalidates it.
  SB_JAVA_VERSION="$(printf '%s' "$line" | sed -E 's/^[^"]*"([^"]+)".*/\1/')"
  local ok
  for ok in "$@"; do [ "$major" = "$ok" ] && return 0; done
  sb_die "$SB_JAVA is Java $major ($line); $SB_NAME needs Java $(printf '%s ' "$@")(set JAVA_HOME to one)"
}

# Fetches a pom's runtime dependencies into $2 (a lib dir) once. Extra args go to mvn
# (e.g. -Dkafka.version=3.9.1). Maven runs in a scratch copy of the pom so nothing
# (target/, logs) lands in the repo, and the lib dir appears whole or not at all.
# A hash of the pom is kept next to the jars: editing the pom refetches.
sb_fetch_jars() {
  local pom="$1" lib="$2"
  shift 2
  local want
  want="$(cat "$pom" <(printf '%s\n' "$@") | sha256sum | cut -d' ' -f1)"
  if [ -f "$lib/.complete" ] && [ "$(cat "$lib/.complete")" = "$want" ]; then return 0; fi
  command -v mvn >/dev/null 2>&1 ||
    sb_die "mvn (Apache Maven) not found on PATH; it is needed once to fetch the $SB_NAME jars into $lib. Install it, e.g. apt-get install maven"
  sb_log "fetching $SB_NAME jars from Maven Central into $lib (first run only)..."
  mkdir -p "$(dirname "$lib")"
  local work
  work="$(mktemp -d "$(dirname "$lib")/.fetch.XXXXXX")"
  cp "$pom" "$work/pom.xml"
  if ! (cd "$work" && mvn -B -q dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$work/lib" "$@") >"$work/mvn.log" 2>&1; then
    tail -n 40 "$work/mvn.log" >&2
    rm -rf "$work"
    sb_die "downloading the $SB_NAME jars with Maven failed (Maven Central unreachable, or a version missing?); mvn output above"
  fi
  printf '%s\n' "$want" >"$work/lib/.complete"
  rm -rf "$lib" "$(dirname "$lib")"/*.jsa* # with the class-data archives of the old jars
  mv "$work/lib" "$lib"
  rm -rf "$work"
  sb_log "fetched $(find "$lib" -name '*.jar' | wc -l) jars ($(du -sh "$lib" | cut -f1))"
}

# Sets SB_CDS_OPTS: JVM flags for an application class-data sharing (AppCDS)
# archive of the classes in the jars of lib dir $1. Loading ~10,000 classes from
# jars is a large part of a JVM server's start on 2 cores; the archive holds them
# already parsed and verified (measured: Kafka ~45% and Cassandra ~30% less CPU to
# start). With no archive yet, the JVM records one when it exits cleanly (down.sh)
# into *.jsa.new; the next start checks that file (a dump cut short by SIGKILL, or
# another JDK, fails -Xshare:on) and only then uses it. The name carries the JDK
# version and sb_fetch_jars deletes archives of replaced jars. Extra args are JVM
# flags the archive must be made and used with (e.g. those a -javaagent needs).
sb_cds_opts() {
  local lib="$1"
  shift
  local jsa
  jsa="$(dirname "$lib")/app-cds-$SB_JAVA_VERSION.jsa"
  if [ -s "$jsa.new" ]; then
    # (In the state dir: a bad archive makes the JVM abort and write hs_err_pid*.log.)
    if (cd "$SB_RUN" && "$SB_JAVA" "$@" -Xshare:on "-XX:SharedArchiveFile=$jsa.new" -cp "$lib/*" \
      -XX:-CreateCoredumpOnCrash -version) >/dev/null 2>&1; then
      mv -f "$jsa.new" "$jsa"
    else
      sb_log "discarding unusable class-data archive $jsa.new"
      rm -f "$jsa.new"
    fi
  fi
  # shellcheck disable=SC2034 # read by the caller
  SB_CDS_ARCHIVE="$jsa"
  # The dump at exit warns about every class it skips; keep server.log readable.
  SB_CDS_OPTS=("$@" -Xlog:cds=off -Xlog:cds+dynamic=off)
  if [ -s "$jsa" ]; then
    SB_CDS_OPTS+=("-XX:SharedArchiveFile=$jsa")
  else
    SB_CDS_OPTS+=("-XX:ArchiveClassesAtExit=$jsa.new")
  fi
}

# --- process and port checks ---------------------------------------------------

# Prints the server's pid if the pid file names a live process that is our server.
sb_pid() {
  local pid
  pid="$(cat "$SB_PID_FILE" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # A zombie or a recycled pid has no (or another) command line.
  tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | grep -qxF -- "$SB_MARKER" || return 1
  printf '%s\n' "$pid"
}

# True while process $1 is exiting but still holds its sockets and files. After
# kill -9 the JVM's main thread turns zombie (empty /proc/PID/cmdline, so sb_pid no
# longer sees it) while its other threads are still being torn down, and the ports
# and Kafka's data-dir lock are released only when the last thread is gone
# (~0.5 s for Cassandra). Starting again in that window fails with "address in use".
sb_dying() {
  grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null || return 1
  [ "$(find "/proc/$1/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)" -gt 1 ]
}

# Waits (up to 10 s) until the process named by the pid file, if it is exiting,
# has fully released its resources.
sb_wait_exited() {
  local pid i
  pid="$(cat "$SB_PID_FILE" 2>/dev/null)" || return 0
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  for ((i = 0; i < 100; i++)); do
    sb_dying "$pid" || return 0
    sleep 0.1
  done
}

# True when something accepts TCP connections on 127.0.0.1:$1.
# bash's /dev/tcp avoids depending on nc; timeout guards against a full backlog.
sb_port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Dies if a port we are about to bind is already taken (by something that is not us).
sb_require_free_port() {
  local port="$1" what="$2"
  if sb_port_open "$port"; then
    sb_die "port $port ($what) on 127.0.0.1 is already in use by another process:
$(ss -ltnp "sport = :$port" 2>/dev/null | tail -n +2)
stop it, or choose other ports through the environment (see test/infra/$SB_NAME/up.sh)"
  fi
}

# Decides whether a running server can be reused for port $1 ($2 names the env var
# that picks the port, for the error message). Returns 0 when it can: the caller
# prints its KEY=value lines and exits. Returns 1 when there is nothing to reuse,
# after stopping a server of ours that no longer answers (e.g. its start was
# interrupted half way), so the caller goes on with a cold start.
sb_reusable() {
  local port="$1" port_var="$2" pid running_port
  if ! pid="$(sb_pid)"; then
    sb_wait_exited # one killed just before (restartServer) may still hold its ports
    return 1
  fi
  running_port="$(cat "$SB_RUN/port" 2>/dev/null || echo '?')"
  if [ "$running_port" != "$port" ]; then
    sb_die "$SB_NAME already runs on port $running_port (pid $pid) but $port_var=$port was asked; run test/infra/down.sh $SB_NAME first"
  fi
  # A test that paused the server (SIGSTOP) and died before resuming it would leave
  # it frozen: the kernel still accepts connections, so it would look healthy.
  if [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == T* ]]; then
    sb_log "pid $pid was stopped (SIGSTOP); resuming it"
    kill -CONT "$pid"
  fi
  if sb_port_open "$port"; then
    sb_log "reusing running server (pid $pid, log $SB_LOG_FILE)"
    return 0
  fi
  sb_log "pid $pid is ours but port $port does not answer; restarting it"
  sb_stop_server 10
  return 1
}

# --- start, wait, stop -----------------------------------------------------------

# Starts "$@" (a java command line that includes $SB_MARKER) detached: own session
# (setsid) so signals to the caller's process group do not reach it, stdin from
# /dev/null, output appended to the log, the lock fd closed. The previous log is
# kept as server.log.1 so a restart after kill -9 can still show why.
sb_start() {
  if [ -s "$SB_LOG_FILE" ]; then mv -f "$SB_LOG_FILE" "$SB_LOG_FILE.1"; fi
  : >"$SB_LOG_FILE"
  rm -f "$SB_PID_FILE"
  # The inner shell writes its own pid, then execs java, so the pid file holds the
  # JVM's pid however setsid decides to fork. It runs in the state dir so whatever
  # a JVM writes to its working directory (hs_err_pid*.log on a crash) stays out of
  # the caller's (often the repo).
  # shellcheck disable=SC2016 # $$ and $@ are for the inner shell
  setsid bash -c 'cd "$0" && echo $$ >"$1" && shift && exec "$@"' "$SB_RUN" "$SB_PID_FILE" "$@" \
    </dev/null >>"$SB_LOG_FILE" 2>&1 9>&- &
  disown $! 2>/dev/null || true
}

# Prints the last $1 lines of the server log to stderr (for failure messages).
sb_tail_log() {
  printf -- '----- last %s lines of %s -----\n' "$1" "$SB_LOG_FILE" >&2
  tail -n "$1" "$SB_LOG_FILE" >&2 2>/dev/null || true
  printf -- '-----\n' >&2
}

# Waits until the server accepts connections on $1 AND its log matches the extended
# regexp $2 (an open port alone can mean "socket bound, not yet serving").
# Gives up after $3 seconds, or as soon as the process dies, and then stops what is
# left, prints the log tail and exits non-zero.
sb_wait_ready() {
  local port="$1" pattern="$2" timeout_s="$3"
  local deadline=$((SECONDS + timeout_s)) started=$SECONDS
  # The pid file is written by the detached shell a moment after sb_start returns.
  while [ ! -s "$SB_PID_FILE" ] && [ $SECONDS -lt $((started + 5)) ]; do sleep 0.05; done
  while :; do
    if ! sb_pid >/dev/null; then
      sb_tail_log 60
      sb_die "the $SB_NAME server exited during startup (log: $SB_LOG_FILE)"
    fi
    if grep -Eq -- "$pattern" "$SB_LOG_FILE" && sb_port_open "$port"; then
      sb_log "ready on 127.0.0.1:$port after $((SECONDS - started))s (pid $(sb_pid), log $SB_LOG_FILE)"
      return 0
    fi
    if [ $SECONDS -ge "$deadline" ]; then
      sb_tail_log 60
      sb_stop_server 10
      sb_die "the $SB_NAME server was not ready on 127.0.0.1:$port within ${timeout_s}s (log: $SB_LOG_FILE); stopped it"
    fi
    sleep 0.2
  done
}

# Stops our server if it runs: SIGTERM (clean shutdown), wait up to $1 seconds
# (default 30), then SIGKILL. A SIGSTOPped server is continued first, or it
# would never act on the SIGTERM.
sb_stop_server() {
  local grace="${1:-30}" pid i
  if ! pid="$(sb_pid)"; then
    rm -f "$SB_PID_FILE"
    return 0
  fi
  sb_log "stopping pid $pid"
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    sb_pid >/dev/null || break
    sleep 0.1
  done
  if sb_pid >/dev/null; then
    sb_log "pid $pid still alive after ${grace}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      sb_pid >/dev/null || break
      sleep 0.1
    done
  fi
  if sb_pid >/dev/null; then sb_die "could not stop pid $pid"; fi
  sb_wait_exited
  rm -f "$SB_PID_FILE"
}
