/**
 * Images without images: the agent pulls nothing. Each `--image REPO=COMMAND` maps an image
 * repository to a local command that plays its entrypoint, and this file decides, for one container,
 * which argv to run. Pure (the executable check is passed in), so it is unit-tested.
 */

export interface ImageMapping {
  /** Last path segment of the image repository, e.g. "switchboard" for ghcr.io/x/switchboard:1.0. */
  repo: string;
  /** Argv prefix that plays the image's entrypoint, e.g. ["node", "/abs/dist/cmd/switchboard.js"]. */
  command: string[];
}

/** Parses one `--image REPO=COMMAND` value (COMMAND split on spaces: no quoting). */
export function parseImageMapping(value: string): ImageMapping {
  const eq = value.indexOf("=");
  const repo = eq > 0 ? value.slice(0, eq).trim() : "";
  const command =
    eq > 0
      ? value
          .slice(eq + 1)
          .split(" ")
          .filter(Boolean)
      : [];
  if (!repo || command.length === 0 || repo.includes("/") || repo.includes(":"))
    throw new Error(
      `--image ${value}: expected REPO=COMMAND, REPO a repository name without registry or tag`,
    );
  return { repo, command };
}

/**
 * The repository's last path segment: registry, tag and digest dropped.
 * "registry:5000/org/switchboard:1.2@sha256:…" → "switchboard".
 */
export function imageRepoName(image: string): string {
  let ref = image.trim();
  const at = ref.indexOf("@");
  if (at >= 0) ref = ref.slice(0, at);
  const slash = ref.lastIndexOf("/");
  const colon = ref.lastIndexOf(":");
  // A colon after the last slash starts the tag; one before it is a registry port.
  if (colon > slash) ref = ref.slice(0, colon);
  return ref.slice(slash + 1);
}

export type CommandResolution =
  | { ok: true; argv: string[] }
  /** reason: the containerStatuses waiting reason a kubelet would report. */
  | { ok: false; reason: "ErrImagePull" | "CreateContainerError"; message: string };

/**
 * The argv of a container: the image's mapped command followed by `args`, or `command` + `args`
 * when `command` is set. A `command` replaces the entrypoint only when it names an absolute path to
 * an executable on this host: a bare name or a path inside an image we do not have would run
 * something other than what the Pod asked for, so it is refused instead.
 * `command` and `args` must already have their $(VAR) references expanded.
 */
export function resolveCommand(
  container: { name: string; image?: string | undefined; command?: string[]; args?: string[] },
  mappings: readonly ImageMapping[],
  isExecutable: (path: string) => boolean,
): CommandResolution {
  const args = container.args ?? [];
  const command = container.command ?? [];
  if (command.length > 0) {
    const exe = command[0]!;
    if (!exe.startsWith("/"))
      return {
        ok: false,
        reason: "CreateContainerError",
        message: `container ${container.name}: command ${JSON.stringify(exe)} is not an absolute path; the node agent runs only absolute paths to executables on the host in place of an image's entrypoint`,
      };
    if (!isExecutable(exe))
      return {
        ok: false,
        reason: "CreateContainerError",
        message: `container ${container.name}: command ${exe} is not an executable file on this host`,
      };
    return { ok: true, argv: [...command, ...args] };
  }
  const image = container.image ?? "";
  const repo = imageRepoName(image);
  const mapping = mappings.find((m) => m.repo === repo);
  if (!mapping)
    return {
      ok: false,
      reason: "ErrImagePull",
      message: `image ${JSON.stringify(image)}: no --image mapping for repository ${JSON.stringify(repo)} (the node agent pulls no images)`,
    };
  return { ok: true, argv: [...mapping.command, ...args] };
}
