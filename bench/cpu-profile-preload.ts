/**
 * Loaded into each role process of a benchmarked cluster (`--backend cluster --cpu-prof`) through
 * NODE_OPTIONS=--import=... (node refuses --cpu-prof there): V8's CPU profile of the process, written
 * to $SWITCHBOARD_BENCH_CPU_PROF_DIR/<role>-<http port>-<pid>.cpuprofile when it stops. Processes
 * without --role (provisioning) are left alone.
 */
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector";
import { join } from "node:path";

const dir = process.env.SWITCHBOARD_BENCH_CPU_PROF_DIR;
const at = process.argv.indexOf("--role");
const role = at >= 0 ? process.argv[at + 1] : undefined;

if (dir && role) {
  const session = new Session();
  session.connect();
  session.post("Profiler.enable");
  session.post("Profiler.start");
  let written = false;
  const write = () => {
    if (written) return;
    written = true;
    // The in-process inspector answers synchronously, so this also works in an "exit" listener.
    session.post("Profiler.stop", (err, result) => {
      if (err) return;
      const name = `${role}-${process.env.SWITCHBOARD_HTTP_PORT ?? "x"}-${process.pid}.cpuprofile`;
      writeFileSync(join(dir, name), JSON.stringify(result.profile));
    });
  };
  process.prependListener("SIGTERM", write);
  process.on("exit", write);
}
