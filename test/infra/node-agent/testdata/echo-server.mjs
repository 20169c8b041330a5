// A tiny container program for the node agent's tests: an HTTP server on 0.0.0.0:$PORT (8080)
// that shows what the agent gave it.
//   /readyz   503 for the first READY_AFTER_MS (1000) ms, and while READY_FILE (if set) is missing
//   /healthz  200
//   /env      its environment, as JSON
//   /resolv   its /etc/resolv.conf
//   /hostname its hostname
//   /file?path=P  the content of file P (404 when unreadable)
//   /lookup?name=N  the IPv4 addresses N resolves to (getaddrinfo: /etc/resolv.conf), as JSON
//   /exit     answers, then exits with code 3
// On SIGTERM it logs "SIGTERM received" and exits 300 ms later (a graceful shutdown to observe).
import { lookup } from "node:dns/promises";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { hostname } from "node:os";

const startedAt = Date.now();
const readyAfterMs = Number(process.env.READY_AFTER_MS ?? 1000);
const readyFile = process.env.READY_FILE;
const port = Number(process.env.PORT ?? 8080);

function send(res, status, body, type = "text/plain") {
  res.writeHead(status, { "content-type": type });
  res.end(body);
}

const server = createServer((req, res) => {
  const url = new URL(req.url ?? "/", "http://x");
  switch (url.pathname) {
    case "/readyz": {
      const ready = Date.now() - startedAt >= readyAfterMs && (!readyFile || existsSync(readyFile));
      return send(res, ready ? 200 : 503, ready ? "ready\n" : "not ready\n");
    }
    case "/healthz":
      return send(res, 200, "ok\n");
    case "/env":
      return send(res, 200, JSON.stringify(process.env), "application/json");
    case "/resolv":
      return send(res, 200, readFileSync("/etc/resolv.conf", "utf8"));
    case "/hostname":
      return send(res, 200, hostname());
    case "/file":
      try {
        return send(res, 200, readFileSync(url.searchParams.get("path") ?? "", "utf8"));
      } catch (err) {
        return send(res, 404, String(err));
      }
    case "/lookup":
      lookup(url.searchParams.get("name") ?? "", { all: true, family: 4 }).then(
        (found) => send(res, 200, JSON.stringify(found.map((a) => a.address).sort()), "application/json"),
        (err) => send(res, 502, String(err)),
      );
      return;
    case "/exit":
      console.log("exiting with code 3 as asked");
      res.on("finish", () => process.exit(3));
      return send(res, 200, "bye\n");
    default:
      return send(res, 404, "not found\n");
  }
});

server.listen(port, "0.0.0.0", () => {
  const a = server.address();
  console.log(`echo-server listening on ${a.address}:${a.port} (pid ${process.pid})`);
});

process.on("SIGTERM", () => {
  console.log("SIGTERM received; exiting in 300 ms");
  server.close();
  setTimeout(() => process.exit(0), 300);
});
