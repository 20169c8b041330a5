import { type LogEntry, logLevel } from "kafkajs";
import { describe, expect, it } from "vitest";
import { kafkajsLevel, kafkajsLogCreator } from "./kafkajs-log.js";
import type { Logger } from "./log.js";

const entry = (level: logLevel, log: Record<string, unknown>): LogEntry => ({
  namespace: "Connection",
  level,
  label: "ERROR",
  log: { timestamp: "2026-12-03T00:00:00.000Z", message: "", ...log },
});

describe("kafkajs log levels", () => {
  it("puts the failed responses kafkajs retries at debug, and keeps the others at error", () => {
    const response = (error: string) =>
      entry(logLevel.ERROR, { message: "Response GroupCoordinator(key: 10, version: 2)", error });
    // Retriable in kafkajs's own table: a group's coordinator being elected, a rebalance.
    expect(kafkajsLevel(response("The group coordinator is not available"))).toBe("debug");
    expect(kafkajsLevel(response("The group is rebalancing, so a rejoin is needed"))).toBe("debug");
    // Not retriable: an operator has to act.
    expect(kafkajsLevel(response("Not authorized to access topics: [Topic authorization failed]"))).toBe(
      "error",
    );
    expect(kafkajsLevel(response("Not authorized to access group: Group authorization failed"))).toBe(
      "error",
    );
    // An error line that is not a response keeps its level whatever it says.
    expect(
      kafkajsLevel(
        entry(logLevel.ERROR, { message: "Crash", error: "The group coordinator is not available" }),
      ),
    ).toBe("error");
  });

  it("puts the idempotent producer's bounded-retries warning at debug and keeps other warnings", () => {
    expect(
      kafkajsLevel(
        entry(logLevel.WARN, {
          message: "Limiting retries for the idempotent producer may invalidate EoS guarantees",
        }),
      ),
    ).toBe("debug");
    expect(kafkajsLevel(entry(logLevel.WARN, { message: "The group is rebalancing, re-joining" }))).toBe(
      "warn",
    );
    expect(kafkajsLevel(entry(logLevel.INFO, { message: "Starting" }))).toBe("info");
  });

  it("puts an expelled member's rejoin at warn, and the response that told it at debug", () => {
    expect(
      kafkajsLevel(
        entry(logLevel.ERROR, {
          message: "Response Heartbeat(key: 12, version: 3)",
          error: "The coordinator is not aware of this member",
        }),
      ),
    ).toBe("debug");
    expect(
      kafkajsLevel(
        entry(logLevel.ERROR, {
          message: "The coordinator is not aware of this member, re-joining the group",
        }),
      ),
    ).toBe("warn");
  });

  it("writes each line as 'kafka: <message>' with kafkajs's fields", () => {
    const lines: Array<[string, string, Record<string, unknown> | undefined]> = [];
    const at =
      (level: string) =>
      (msg: string, fields?: Record<string, unknown>): void => {
        lines.push([level, msg, fields]);
      };
    const log = { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") } as Logger;
    const write = kafkajsLogCreator(log)();
    write(entry(logLevel.ERROR, { message: "Response Produce(key: 0, version: 7)", error: "Broker gone" }));
    expect(lines).toEqual([
      [
        "error",
        "kafka: Response Produce(key: 0, version: 7)",
        { namespace: "Connection", timestamp: "2026-12-03T00:00:00.000Z", error: "Broker gone" },
      ],
    ]);
  });
});
