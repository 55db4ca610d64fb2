/**
 * The Agent container: supervisord + flared + the Hermes gateways of one bot
 * group. One Durable Object (and one container) per group, named by group.
 *
 * The Worker reaches flared's control API on CONTROL_PORT through this
 * object only, with an internal token the object makes itself: a fresh token
 * is minted just before each container start, kept in Durable Object storage,
 * handed to that container as FLARE_CONTROL_TOKEN, and used until the next
 * start; a stop event handled late never changes it. It never leaves the
 * Worker and the container. Whatever credential a caller of /api/* presented
 * is stripped before the request reaches flared.
 */
import { Container, type OutboundHandler } from "@cloudflare/containers";
import CONFIG_YAML from "../../hermes-flare.yaml";
import type { Env } from "./env";
import {
  agentEnvVars,
  commaList,
  CONTROL_PORT,
  EGRESS_PLACEHOLDER_PREFIX,
  IMAGE_STATE_DIR,
  referencedVars,
  SANDBOX_HOST,
  toBase64,
} from "./agent-env";
import { sandboxOutbound } from "./sandboxes";

export { CONFIG_YAML };

export { agentEnvVars, commaList, CONTROL_PORT, EGRESS_PLACEHOLDER_PREFIX, IMAGE_STATE_DIR, referencedVars, toBase64 };

/**
 * How long a cold start may take before a request gives up: getting an
 * instance, pulling the image, and flared listening on its control port.
 * The library's own containerFetch waits 8 s for an instance and 20 s in all,
 * less than an Agent image's cold start on Cloudflare.
 */
export const COLD_START_INSTANCE_MS = 60_000;
export const COLD_START_TIMEOUT_MS = 90_000;
/** Seconds a client should wait before retrying when the container could not be started. */
export const START_RETRY_AFTER_S = 10;

/** Header the Worker sets so the object knows which group it is. */
export const GROUP_HEADER = "X-Flare-Group";

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

/** Storage keys of the Agent object. */
export const TOKEN_KEY = "control-token";
export const GROUP_KEY = "group";

/** The group this object serves: fixed by the first request that names one. */
export async function agentGroup(storage: DurableObjectStorage, requestedGroup: string | null): Promise<string> {
  let group = await storage.get<string>(GROUP_KEY);
  if (!group) {
    group = requestedGroup ?? "default";
    await storage.put(GROUP_KEY, group);
  }
  return group;
}

/**
 * A non-JSON error from @cloudflare/containers (the container could not start,
 * the connection to it broke) as the JSON error every /api/* answer is, with
 * the library's own text: flared itself always answers JSON.
 */
export async function containerErrorAsJson(res: Response, group: string): Promise<Response> {
  if (res.ok || (res.headers.get("Content-Type") ?? "").includes("application/json")) return res;
  const text = (await res.text()).trim();
  const status = res.status >= 500 ? 503 : res.status;
  return Response.json(
    { error: `the Agent container of group ${group}: ${text.slice(0, 1000) || `HTTP ${res.status}`}`, container: true },
    { status, headers: status === 503 ? { "Retry-After": String(START_RETRY_AFTER_S) } : {} },
  );
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
  // Decided here, not per request: when this object restarts while its
  // container runs, the library re-applies interception from its constructor,
  // before any fetch. HTTPS to EGRESS_HOSTS goes through egressOutbound only
  // when a secret is injected at egress; the image then trusts Cloudflare's CA.
  override interceptHttps = commaList(this.env.EGRESS_SECRETS).length > 0;

  /** The token of the container about to be started (cleared once it has started). */
  private pendingToken: string | undefined;

  override async fetch(request: Request): Promise<Response> {
    const group = await agentGroup(this.ctx.storage, request.headers.get(GROUP_HEADER));
    const token = await this.tokenFor(group);
    const failed = await this.startIfNeeded(request.signal);
    if (failed) return containerErrorAsJson(failed, group);
    const res = await this.containerFetch(toControlRequest(request, token), CONTROL_PORT);
    return containerErrorAsJson(res, group);
  }

  /**
   * Start the container and wait for flared's port for as long as a cold
   * start takes (containerFetch alone would give up after 20 s and answer
   * 503). null when it listens; otherwise the failure as a response.
   */
  private async startIfNeeded(signal: AbortSignal): Promise<Response | null> {
    if (await this.isUp()) return null;
    try {
      await this.startAndWaitForPorts({
        ports: [CONTROL_PORT],
        cancellationOptions: { abort: signal, instanceGetTimeoutMS: COLD_START_INSTANCE_MS, portReadyTimeoutMS: COLD_START_TIMEOUT_MS },
      });
      return null;
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      return new Response(`the container did not start within ${COLD_START_TIMEOUT_MS / 1000}s: ${msg}`, { status: 503 });
    }
  }

  /**
   * The token of the running container, or, when none runs, a fresh one the
   * next start (inside containerFetch) hands over. Concurrent requests before
   * that start share one pending token, and the library's pending onStop runs
   * at start without touching it.
   */
  private async tokenFor(group: string): Promise<string> {
    if (this.ctx.container?.running) {
      const token = await this.ctx.storage.get<string>(TOKEN_KEY);
      if (token) return token;
      // A container whose token this object lost (storage wiped): nobody can
      // talk to it; stop it so the next request starts one with a known token.
      await this.stop();
    }
    if (this.pendingToken === undefined) {
      const token = randomToken();
      this.pendingToken = token;
      this.envVars = agentEnvVars(this.env, group, token, CONFIG_YAML);
      await this.ctx.storage.put(TOKEN_KEY, token);
    }
    return this.pendingToken;
  }

  override onStart(): void {
    this.pendingToken = undefined;
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

  /** RPC: whether the container runs and flared's port answered since it started (never starts one). */
  async isUp(): Promise<boolean> {
    return (this.ctx.container?.running ?? false) && (await this.getState()).status === "healthy";
  }

  /** RPC for the sandbox outbound handler: the token this container was started with. */
  async controlToken(): Promise<string> {
    return (await this.ctx.storage.get<string>(TOKEN_KEY)) ?? "";
  }

  override onActivityExpired(): Promise<void> {
    // Keep running: returning without stopping renews the activity timer.
    return Promise.resolve();
  }

  override onStop(params: { exitCode: number; reason: string }): void {
    // The token stays until the next start replaces it: a stop handled late
    // (the library runs pending onStop calls at the next start) must not
    // invalidate the token that start hands over.
    console.log(`Agent container stopped: exit code ${params.exitCode} (${params.reason})`);
  }
}

// Assigned (not declared as static fields) so the Container base class's
// setters register them for its outbound proxy.
Agent.outboundByHost = {
  [SANDBOX_HOST]: sandboxOutbound,
  ...Object.fromEntries(EGRESS_HOSTS.map((h) => [h, egressOutbound])),
};
