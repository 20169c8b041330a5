// The pure parts of the container and Pod lifecycle: image → command, restart back-off and
// policy, probe thresholds, Pod phase and conditions, the namespace script and the listen shim.
import { describe, expect, it } from "vitest";
import { nextBackoffMs, shouldRestart } from "./container.js";
import { imageRepoName, parseImageMapping, resolveCommand } from "./image.js";
// @ts-expect-error: a plain ESM file without types (it is loaded by NODE_OPTIONS, not compiled)
import { rewriteListenArgs } from "./listen-shim.mjs";
import { type ContainerStatusJson, podConditions, podPhase } from "./pod-status.js";
import { ProbeState, probeSettings, resolvePort } from "./probes.js";
import { namespaceScript, shellQuote } from "./supervisor.js";

describe("images", () => {
  it.each([
    ["switchboard", "switchboard"],
    ["switchboard:1.2", "switchboard"],
    ["ghcr.io/acme/switchboard:1.2", "switchboard"],
    ["registry:5000/acme/switchboard", "switchboard"],
    ["registry:5000/acme/switchboard:v1@sha256:abc", "switchboard"],
    ["docker.io/library/busybox@sha256:abc", "busybox"],
  ])("%s → %s", (image, repo) => expect(imageRepoName(image)).toBe(repo));

  const mappings = [parseImageMapping("echo=node /abs/echo.mjs")];
  it("runs the mapped command followed by args", () => {
    expect(
      resolveCommand({ name: "c", image: "x/echo:1", args: ["--a", "b"] }, mappings, () => true),
    ).toEqual({
      ok: true,
      argv: ["node", "/abs/echo.mjs", "--a", "b"],
    });
  });
  it("lets an absolute executable command replace the entrypoint, and refuses anything else", () => {
    expect(
      resolveCommand(
        { name: "c", image: "echo", command: ["/bin/sh", "-c"], args: ["x"] },
        mappings,
        () => true,
      ),
    ).toEqual({
      ok: true,
      argv: ["/bin/sh", "-c", "x"],
    });
    expect(resolveCommand({ name: "c", image: "echo", command: ["sh"] }, mappings, () => true)).toMatchObject(
      {
        ok: false,
        reason: "CreateContainerError",
      },
    );
    expect(
      resolveCommand({ name: "c", image: "echo", command: ["/no/such"] }, mappings, () => false),
    ).toMatchObject({
      ok: false,
      reason: "CreateContainerError",
    });
    expect(resolveCommand({ name: "c", image: "other:1" }, mappings, () => true)).toMatchObject({
      ok: false,
      reason: "ErrImagePull",
    });
  });
  it("parses mappings", () => {
    expect(parseImageMapping("sb=node /a/b.js start")).toEqual({
      repo: "sb",
      command: ["node", "/a/b.js", "start"],
    });
    expect(() => parseImageMapping("nocommand=")).toThrow();
    expect(() => parseImageMapping("reg/x=node")).toThrow();
  });
});

describe("restarts", () => {
  it("backs off 1 s doubling to 30 s, and starts over after 10 s of running", () => {
    let d: number | undefined;
    const seen: number[] = [];
    for (let i = 0; i < 8; i++) {
      d = nextBackoffMs(d, 500);
      seen.push(d);
    }
    expect(seen).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    expect(nextBackoffMs(30000, 10_000)).toBe(1000);
  });
  it("follows the restart policy", () => {
    expect(shouldRestart(undefined, 0)).toBe(true);
    expect(shouldRestart("Always", 0)).toBe(true);
    expect(shouldRestart("OnFailure", 0)).toBe(false);
    expect(shouldRestart("OnFailure", 3)).toBe(true);
    expect(shouldRestart("Never", 3)).toBe(false);
  });
});

describe("probes", () => {
  it("flips only after the thresholds, once per flip", () => {
    const s = new ProbeState({ successThreshold: 2, failureThreshold: 3 });
    expect(s.record(true)).toBeUndefined();
    expect(s.record(true)).toBe(true);
    expect(s.record(true)).toBeUndefined();
    expect(s.record(false)).toBeUndefined();
    expect(s.record(false)).toBeUndefined();
    expect(s.record(true)).toBeUndefined(); // resets the failure count
    expect(s.record(false)).toBeUndefined();
    expect(s.record(false)).toBeUndefined();
    expect(s.record(false)).toBe(false);
    expect(s.record(false)).toBeUndefined();
  });
  it("uses the API defaults; liveness needs one success", () => {
    expect(probeSettings({}, "readiness")).toEqual({
      initialDelayMs: 0,
      periodMs: 10_000,
      timeoutMs: 1_000,
      successThreshold: 1,
      failureThreshold: 3,
    });
    expect(probeSettings({ successThreshold: 3 }, "liveness").successThreshold).toBe(1);
  });
  it("resolves ports by number and by name", () => {
    const c = { name: "c", ports: [{ name: "http", containerPort: 8080 }] };
    expect(resolvePort(81, c)).toBe(81);
    expect(resolvePort("82", c)).toBe(82);
    expect(resolvePort("http", c)).toBe(8080);
    expect(() => resolvePort("grpc", c)).toThrow(/no port named/);
  });
});

describe("pod status", () => {
  const st = (
    state: ContainerStatusJson["state"],
    ready = false,
    last: ContainerStatusJson["lastState"] = {},
  ) =>
    ({
      name: "c",
      image: "i",
      imageID: "",
      ready,
      started: false,
      restartCount: 0,
      state,
      lastState: last,
    }) as ContainerStatusJson;
  const running = st({ running: { startedAt: "t" } }, true);
  const creating = st({ waiting: { reason: "ContainerCreating" } });
  const term = (exitCode: number) => ({ exitCode, reason: "x", startedAt: "t", finishedAt: "t" });
  const crashLoop = st({ waiting: { reason: "CrashLoopBackOff" } }, false, { terminated: term(1) });

  it("computes the phase as the kubelet does", () => {
    expect(podPhase("Always", [creating])).toBe("Pending");
    expect(podPhase("Always", [running, creating])).toBe("Pending");
    expect(podPhase("Always", [running])).toBe("Running");
    expect(podPhase("Always", [crashLoop])).toBe("Running");
    expect(podPhase("Never", [st({ terminated: term(0) })])).toBe("Succeeded");
    expect(podPhase("Never", [st({ terminated: term(2) })])).toBe("Failed");
    expect(podPhase("OnFailure", [st({ terminated: term(0) })])).toBe("Succeeded");
    expect(podPhase("OnFailure", [crashLoop])).toBe("Running");
  });

  it("keeps lastTransitionTime while a condition holds", () => {
    const first = podConditions([creating], [], true, "T1", false);
    expect(first.find((c) => c.type === "Ready")).toMatchObject({
      status: "False",
      lastTransitionTime: "T1",
    });
    const second = podConditions([creating], first, true, "T2", false);
    expect(second.find((c) => c.type === "Ready")?.lastTransitionTime).toBe("T1");
    const ready = podConditions([running], second, true, "T3", false);
    expect(ready.find((c) => c.type === "Ready")).toMatchObject({ status: "True", lastTransitionTime: "T3" });
    expect(ready.find((c) => c.type === "PodScheduled")?.lastTransitionTime).toBe("T1");
    // Readiness gates hold Ready back, not ContainersReady.
    const gated = podConditions([running], ready, false, "T4", false);
    expect(gated.find((c) => c.type === "ContainersReady")?.status).toBe("True");
    expect(gated.find((c) => c.type === "Ready")?.status).toBe("False");
  });
});

describe("container start", () => {
  it("quotes for the shell", () => {
    expect(shellQuote("a'b c")).toBe(`'a'\\''b c'`);
  });
  it("mounts every volume, read-only where asked, then execs", () => {
    const script = namespaceScript("web-1", [
      { source: "/state/v/secret", target: "/etc/secret", readOnly: true },
      { source: "/state/etc/resolv.conf", target: "/etc/resolv.conf", readOnly: false },
    ]);
    expect(script.split("\n")).toEqual([
      "set -e",
      "printf %s 'web-1' > /proc/sys/kernel/hostname",
      "mount -t tmpfs -o size=64k,mode=0700 node-agent-stage '/run/switchboard-node-agent-stage'",
      "if [ -d '/state/v/secret' ]; then mkdir '/run/switchboard-node-agent-stage/0'; else : > '/run/switchboard-node-agent-stage/0'; fi",
      "mount --bind '/state/v/secret' '/run/switchboard-node-agent-stage/0'",
      "if [ -d '/state/etc/resolv.conf' ]; then mkdir '/run/switchboard-node-agent-stage/1'; else : > '/run/switchboard-node-agent-stage/1'; fi",
      "mount --bind '/state/etc/resolv.conf' '/run/switchboard-node-agent-stage/1'",
      "mount --bind '/run/switchboard-node-agent-stage/0' '/etc/secret'",
      "mount -o remount,bind,ro '/etc/secret'",
      "mount --bind '/run/switchboard-node-agent-stage/1' '/etc/resolv.conf'",
      "umount -R -l '/run/switchboard-node-agent-stage'",
      'exec "$@"',
    ]);
  });
});

describe("listen shim", () => {
  const ip = "127.245.0.9";
  const cb = () => undefined;
  it.each([
    [[8080], [8080, ip]],
    [
      [8080, cb],
      [8080, ip, cb],
    ],
    [
      [8080, "0.0.0.0"],
      [8080, ip],
    ],
    [
      [8080, "::", 511, cb],
      [8080, ip, 511, cb],
    ],
    [
      [8080, 511, cb],
      [8080, ip, 511, cb],
    ],
    [["8080"], ["8080", ip]],
    [[cb], [0, ip, cb]],
    [[], [0, ip]],
    [
      [8080, "127.0.0.1"],
      [8080, "127.0.0.1"],
    ],
    [[{ port: 8080 }], [{ port: 8080, host: ip }]],
    [
      [{ port: 8080, host: "0.0.0.0" }, cb],
      [{ port: 8080, host: ip }, cb],
    ],
    [[{ port: 8080, host: "127.0.0.1" }], [{ port: 8080, host: "127.0.0.1" }]],
    [[{ path: "/tmp/sock" }], [{ path: "/tmp/sock" }]],
    [["/tmp/sock"], ["/tmp/sock"]],
  ])("%j → %j", (args, want) => {
    expect(rewriteListenArgs(args, ip)).toEqual(want);
  });
});

describe("namespace script with the image under a covered path", () => {
  it("binds a kept path back when a volume covers one of its ancestors, and leaves others alone", () => {
    const script = namespaceScript(
      "p",
      [{ source: "/state/empty", target: "/tmp", readOnly: false }],
      ["/tmp/checkout", "/work/repo"],
    );
    const lines = script.split("\n");
    expect(lines).toContain("mount --bind '/tmp/checkout' '/run/switchboard-node-agent-stage/1'");
    expect(lines).toContain("mkdir -p '/tmp/checkout'");
    expect(lines).toContain("mount --bind '/run/switchboard-node-agent-stage/1' '/tmp/checkout'");
    expect(
      lines.indexOf("mount --bind '/run/switchboard-node-agent-stage/1' '/tmp/checkout'"),
    ).toBeGreaterThan(lines.indexOf("mount --bind '/run/switchboard-node-agent-stage/0' '/tmp'"));
    expect(script).not.toContain("/work/repo");
  });
});
