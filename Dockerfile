# One image for every Switchboard process: the services (`start`, the default), the operator
# (`operator`, as charts/switchboard-operator runs it) and the CLI.
#
#   docker build -t ghcr.io/switchboard-chat/switchboard:0.1.0 .
#
# Not built by the test suite (no Docker there); keep it simple. The runtime stage is distroless:
# no shell, no package manager, user nonroot (65532), and only /tmp needs to be writable, so the Pods
# run with the restricted Pod Security profile and a read-only root filesystem.

# --- build: compile the TypeScript, then drop the dev dependencies -------------------------------
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# `npm ci` semantics (versions from the lockfile, nothing saved), but as `npm install`: the lockfile
# lacks some of biome's optional per-platform packages, so `npm ci` refuses it as out of sync.
# Scripts are skipped because `prepare` runs tsc before the sources are here; lmdb's install script
# (it picks the prebuilt binary for this platform and Node) is run explicitly.
RUN npm install --no-save --no-audit --no-fund --ignore-scripts && npm rebuild lmdb
COPY tsconfig.json ./
COPY cmd ./cmd
COPY internal ./internal
COPY gen ./gen
COPY operator ./operator
COPY sdk/src ./sdk/src
COPY server-client/src ./server-client/src
# tsconfig.json compiles the benchmarks too, and they import the test harness's helpers.
COPY bench ./bench
COPY test ./test
COPY scripts/build-web.mjs ./scripts/
COPY web ./web
# The web client and the SDK's browser bundle (esbuild, a dev dependency: before the prune).
RUN npx tsc -p tsconfig.json && node scripts/build-web.mjs && npm prune --omit=dev

# --- runtime: Node 20 on Debian 12 (the same glibc as bookworm, for lmdb's native module) --------
FROM gcr.io/distroless/nodejs20-debian12:nonroot
WORKDIR /app
ENV NODE_ENV=production
# A young generation of up to 64 MiB per semi-space (V8's default: 16): a distributed role allocates
# ~160 KB per message, and at 1,000 msgs/s the default's scavenges paused a process 610-720 ms in
# 10 s; with 64, 280-300 ms, 3-6 % less CPU and a lower send→deliver p99 (bench/README.md, "A larger
# young generation"). The Pods run distributed roles only; bench/backend.ts runs its distributed
# server the same way.
ENV NODE_OPTIONS=--max-semi-space-size=64
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# The web client served at / (internal/process/web-client.ts reads ../../../web/dist/ from dist/).
COPY --from=build /src/web/dist ./web/dist
# Numeric, so the kubelet can check runAsNonRoot without a runAsUser.
USER 65532:65532
# 8080: HTTP/WebSocket, /healthz, /readyz, /metrics (the operator: 8081); 9090: gRPC.
EXPOSE 8080 8081 9090
# Distroless has `node` at /nodejs/bin/node and not on PATH: `node dist/cmd/switchboard.js`.
ENTRYPOINT ["/nodejs/bin/node", "dist/cmd/switchboard.js"]
CMD ["start"]
