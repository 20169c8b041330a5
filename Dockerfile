# One image for every Switchboard process: the services (`start`), the operator (`operator`) and the
# CLI. Build: docker build -t ghcr.io/switchboard-chat/switchboard:0.1.0 .
# Runs as the distroless `nonroot` user (65532) with a read-only root filesystem (only /tmp writable),
# as the operator's restricted Pod Security settings require.

FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# Locked versions; native modules (lmdb) build against this Node.
RUN npm install --no-save --no-audit --no-fund --ignore-scripts && npm rebuild lmdb
COPY tsconfig.json ./
COPY cmd ./cmd
COPY internal ./internal
COPY gen ./gen
COPY operator ./operator
COPY sdk/src ./sdk/src
COPY bench ./bench
RUN npx tsc -p tsconfig.json && npm prune --omit=dev

FROM gcr.io/distroless/nodejs20-debian12:nonroot
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY web ./web
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/nodejs/bin/node", "dist/cmd/switchboard.js"]
CMD ["start"]
