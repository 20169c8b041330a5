import { describe, expect, it } from "vitest";
import { isControlConnectionRace } from "./driver-races.js";

/** A TypeError with the given stack frames (as the driver's own would read). */
function thrown(message: string, ...frames: string[]): TypeError {
  const err = new TypeError(message);
  err.stack = [`TypeError: ${message}`, ...frames.map((f) => `    at ${f}`)].join("\n");
  return err;
}
const driver = "/app/node_modules/cassandra-driver/lib/control-connection.js";

describe("isControlConnectionRace", () => {
  it("knows the driver's control-connection race by where it throws, in both shapes seen", () => {
    expect(
      isControlConnectionRace(
        thrown(
          "Cannot read properties of null (reading 'once')",
          `ControlConnection._setHealthListeners (${driver}:259:10)`,
          `ControlConnection._refresh (${driver}:506:10)`,
        ),
      ),
    ).toBe(true);
    expect(
      isControlConnectionRace(
        thrown(
          "Cannot read properties of null (reading 'endpoint')",
          `ControlConnection._refresh (${driver}:495:40)`,
          "process.processTicksAndRejections (node:internal/process/task_queues:95:5)",
        ),
      ),
    ).toBe(true);
  });

  it("takes nothing else for it: our own code's errors, other driver errors, other kinds", () => {
    // Thrown in our code, the driver further down the stack.
    expect(
      isControlConnectionRace(
        thrown(
          "Cannot read properties of null (reading 'x')",
          "Gateway.send (/app/dist/internal/gateway/gateway.js:10:5)",
          `ControlConnection._refresh (${driver}:495:40)`,
        ),
      ),
    ).toBe(false);
    expect(
      isControlConnectionRace(thrown("x is not a function", `ControlConnection._refresh (${driver}:495:40)`)),
    ).toBe(false);
    const notTypeError = new Error("Cannot read properties of null (reading 'once')");
    notTypeError.stack = `Error: x\n    at ControlConnection._refresh (${driver}:495:40)`;
    expect(isControlConnectionRace(notTypeError)).toBe(false);
    expect(isControlConnectionRace("Cannot read properties of null")).toBe(false);
  });
});
