/**
 * What the Agent container is started with, as pure functions of the
 * Worker's env: no Workers runtime imports, so the tests that boot the real
 * image with podman compute the exact same environment by running this file
 * under Node (worker/scripts/agent-env.ts). No imports, for that reason.
 */

/** The part of the Worker's env (src/env.ts) the container's environment is made from. */
export interface AgentEnvSource {
  R2_BUCKET_NAME: string;
  CF_ACCOUNT_ID?: string;
  /** Another S3 endpoint for the store (a test's S3 server); empty on deploy. */
  R2_ENDPOINT?: string;
  R2_ACCESS_KEY_ID?: string;
  R2_SECRET_ACCESS_KEY?: string;
  SANDBOX_PROFILES?: string;
  EGRESS_SECRETS?: string;
  [name: string]: unknown;
}

/** flared's control API in the image (`control.port`, set through FLARE_CONTROL__PORT). */
export const CONTROL_PORT = 7979;
/** Where the image keeps state (snapshots restore into it). */
export const IMAGE_STATE_DIR = "/var/lib/hermes-flare";
/** The host the Agent container calls for sandboxes; intercepted into Worker code. */
export const SANDBOX_HOST = "sandboxes.flare.internal";
/** Placeholder a container sees instead of a secret injected at egress. */
export const EGRESS_PLACEHOLDER_PREFIX = "flare-egress-";

/** `${NAME}` and `${NAME:-default}` in the YAML: what the container's environment must supply. */
export function referencedVars(yaml: string): string[] {
  const names = new Set<string>();
  for (const m of yaml.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}/g)) {
    if (m[1]) names.add(m[1]);
  }
  return [...names].sort();
}

export function commaList(value: unknown): string[] {
  return typeof value === "string"
    ? value
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean)
    : [];
}

/** base64 of UTF-8 text (the YAML travels to the container as FLARE_CONFIG_B64). */
export function toBase64(text: string): string {
  const bytes = new TextEncoder().encode(text);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

/**
 * The S3 endpoint flared's store uses: R2_ENDPOINT when set (a local S3
 * server in the topology test), else R2's, from the account id `flared
 * render wrangler` put in [vars].
 */
export function r2Endpoint(env: Pick<AgentEnvSource, "CF_ACCOUNT_ID" | "R2_ENDPOINT">): string | null {
  const override = typeof env.R2_ENDPOINT === "string" ? env.R2_ENDPOINT.trim() : "";
  if (override) return override;
  const id = typeof env.CF_ACCOUNT_ID === "string" ? env.CF_ACCOUNT_ID.trim() : "";
  return id ? `https://${id}.r2.cloudflarestorage.com` : null;
}

/**
 * The Agent container's environment: the YAML, the group, the internal token,
 * the Cloudflare-specific overrides (FLARE_* env overrides of the YAML, so the
 * same file runs locally and here), and the secrets the YAML interpolates.
 */
export function agentEnvVars(env: AgentEnvSource, group: string, token: string, yaml: string): Record<string, string> {
  const vars: Record<string, string> = {
    FLARE_CONFIG_B64: toBase64(yaml),
    FLARE_GROUP: group,
    FLARE_CONTROL_TOKEN: token,
    FLARE_CONTROL__HOST: "0.0.0.0",
    FLARE_CONTROL__PORT: String(CONTROL_PORT),
    FLARE_STATE_DIR: IMAGE_STATE_DIR,
    FLARE_STORE__URL: `s3://${env.R2_BUCKET_NAME}/snapshots`,
    FLARE_STORE__REGION: "auto",
  };
  const endpoint = r2Endpoint(env);
  if (endpoint) vars.FLARE_STORE__ENDPOINT = endpoint;
  if (typeof env.R2_ACCESS_KEY_ID === "string") vars.FLARE_STORE__ACCESS_KEY_ID = env.R2_ACCESS_KEY_ID;
  if (typeof env.R2_SECRET_ACCESS_KEY === "string") vars.FLARE_STORE__SECRET_ACCESS_KEY = env.R2_SECRET_ACCESS_KEY;
  // Every sandbox profile runs on Exec containers here, never in the Agent.
  for (const profile of commaList(env.SANDBOX_PROFILES)) {
    vars[`FLARE_SANDBOXES__${profile.toUpperCase()}__PROVIDER`] = "cloudflare";
    vars[`FLARE_SANDBOXES__${profile.toUpperCase()}__ENDPOINT`] = `http://${SANDBOX_HOST}`;
  }
  const atEgress = new Set(commaList(env.EGRESS_SECRETS));
  for (const name of referencedVars(yaml)) {
    if (name in vars || name.startsWith("FLARE_")) continue;
    const value = env[name];
    if (typeof value !== "string") continue;
    vars[name] = atEgress.has(name) ? `${EGRESS_PLACEHOLDER_PREFIX}${name}` : value;
  }
  return vars;
}
