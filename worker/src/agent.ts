/**
 * The Agent container: supervisord + flared + the Hermes gateways of one bot
 * group. One Durable Object (and one container) per group, named by group.
 *
 * The Worker reaches flared's control API on CONTROL_PORT through this
 * object only, with an internal token the object makes itself: the token is
 * generated in Durable Object storage, handed to the container as
 * FLARE_CONTROL_TOKEN at start, renewed whenever the container stops, and
 * never leaves the Worker and the container. Whatever credential a caller of
 * /api/* presented is stripped before the request reaches flared.
 */
import { Container, type OutboundHandler } from "@cloudflare/containers";
import CONFIG_YAML from "../../hermes-flare.yaml";
import type { Env } from "./env";
import { sandboxOutbound, SANDBOX_HOST } from "./sandboxes";

export { CONFIG_YAML };

/** flared's control API in the image (`control.port`, set through FLARE_CONTROL__PORT). */
export const CONTROL_PORT = 7979;
/** Where the image keeps state (snapshots restore into it). */
export const IMAGE_STATE_DIR = "/var/lib/hermes-flare";
/** Header the Worker sets so the object knows which group it is. */
export const GROUP_HEADER = "X-Flare-Group";

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
 * The Agent container's environment: the YAML, the group, the internal token,
 * the Cloudflare-specific overrides (FLARE_* env overrides of the YAML, so the
 * same file runs locally and here), and the secrets the YAML interpolates.
 */
export function agentEnvVars(env: Env, group: string, token: string, yaml: string): Record<string, string> {
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
  if (typeof env.CF_ACCOUNT_ID === "string" && env.CF_ACCOUNT_ID) {
    vars.FLARE_STORE__ENDPOINT = `https://${env.CF_ACCOUNT_ID}.r2.cloudflarestorage.com`;
  }
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

/** Headers never forwarded to flared: the caller's credentials and Cloudflare's. */
const STRIPPED = ["authorization", "cookie", "cf-access-jwt-assertion", "cf-access-client-id", "cf-access-client-secret"];

/** The request as flared must see it: caller credentials replaced by the internal token. */
export function toControlRequest(request: Request, token: string, port = CONTROL_PORT): Request {
  const url = new URL(request.url);
  const headers = new Headers();
  for (const [k, v] of request.headers) {
    if (!STRIPPED.includes(k.toLowerCase()) && k.toLowerCase() !== GROUP_HEADER.toLowerCase()) headers.set(k, v);
  }
  headers.set("Authorization", `Bearer ${token}`);
  const init: RequestInit = { method: request.method, headers };
  if (request.method !== "GET" && request.method !== "HEAD") init.body = request.body;
  return new Request(`http://127.0.0.1:${port}${url.pathname}${url.search}`, init);
}

export function randomToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Storage keys shared by the Agent and its test double. */
export const TOKEN_KEY = "control-token";
export const GROUP_KEY = "group";

/** The token and group of this object, creating the token on first use. */
export async function agentIdentity(
  storage: DurableObjectStorage,
  requestedGroup: string | null,
): Promise<{ token: string; group: string }> {
  let token = await storage.get<string>(TOKEN_KEY);
  if (!token) {
    token = randomToken();
    await storage.put(TOKEN_KEY, token);
  }
  let group = await storage.get<string>(GROUP_KEY);
  if (!group) {
    group = requestedGroup ?? "default";
    await storage.put(GROUP_KEY, group);
  }
  return { token, group };
}

/** Inject a secret at egress: replace its placeholder in the request headers with the real value. */
export function injectEgressSecrets(request: Request, env: Env): Request {
  const names = commaList(env.EGRESS_SECRETS);
  if (names.length === 0) return request;
  let headers: Headers | null = null;
  for (const [k, v] of request.headers) {
    if (!v.includes(EGRESS_PLACEHOLDER_PREFIX)) continue;
    let nv = v;
    for (const name of names) {
      const secret = env[name];
      if (typeof secret === "string") nv = nv.split(`${EGRESS_PLACEHOLDER_PREFIX}${name}`).join(secret);
    }
    if (nv !== v) {
      headers ??= new Headers(request.headers);
      headers.set(k, nv);
    }
  }
  return headers ? new Request(request, { headers }) : request;
}

/** Hosts whose requests get egress secret injection (HTTPS interception; see docs/cloudflare.md). */
export const EGRESS_HOSTS = [
  "api.anthropic.com",
  "api.openai.com",
  "openrouter.ai",
  "generativelanguage.googleapis.com",
  "gateway.ai.cloudflare.com",
];

const egressOutbound: OutboundHandler = async (request, env) => fetch(injectEgressSecrets(request, env as Env));

export class Agent extends Container<Env> {
  override defaultPort = CONTROL_PORT;
  override requiredPorts = [CONTROL_PORT];
  // Slack Socket Mode needs a live connection: never sleep for lack of HTTP
  // traffic (onActivityExpired below keeps it), and let the cron keep it up.
  override sleepAfter = "1h";
  override enableInternet = true;

  override async fetch(request: Request): Promise<Response> {
    const { token, group } = await agentIdentity(this.ctx.storage, request.headers.get(GROUP_HEADER));
    this.envVars = agentEnvVars(this.env, group, token, CONFIG_YAML);
    // HTTPS to EGRESS_HOSTS goes through egressOutbound only when a secret is
    // injected at egress; the image then trusts Cloudflare's container CA.
    this.interceptHttps = commaList(this.env.EGRESS_SECRETS).length > 0;
    return this.containerFetch(toControlRequest(request, token), CONTROL_PORT);
  }

  /**
   * RPC: stop the container (SIGTERM: supervisord stops flared, which takes its
   * shutdown snapshots). The next request or cron tick starts a new one with
   * the current secrets and YAML: how changes flared refuses live get applied.
   */
  async restart(): Promise<{ restarting: boolean }> {
    const running = this.ctx.container?.running ?? false;
    if (running) await this.stop();
    return { restarting: running };
  }

  /** RPC for the sandbox outbound handler: the token this container was started with. */
  async controlToken(): Promise<string> {
    return (await this.ctx.storage.get<string>(TOKEN_KEY)) ?? "";
  }

  override onActivityExpired(): Promise<void> {
    // Keep running: returning without stopping renews the activity timer.
    return Promise.resolve();
  }

  override async onStop(): Promise<void> {
    // A new container gets a new internal token.
    await this.ctx.storage.delete(TOKEN_KEY);
  }
}

// Assigned (not declared as static fields) so the Container base class's
// setters register them for its outbound proxy.
Agent.outboundByHost = {
  [SANDBOX_HOST]: sandboxOutbound,
  ...Object.fromEntries(EGRESS_HOSTS.map((h) => [h, egressOutbound])),
};
