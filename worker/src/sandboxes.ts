/**
 * The Worker side of the sandbox contract (tests/contracts/sandbox/README.md):
 * flared's `cloudflare` sandbox provider execs commands in Exec containers
 * (Cloudflare Sandbox SDK), one per flared lease id.
 *
 * There is no public route to this: the Agent container reaches it at
 * http://sandboxes.flare.internal, a host its outbound traffic is intercepted
 * for (`Agent.outboundByHost`), so the request never leaves Cloudflare and
 * nothing on the Internet can call it. It still checks the Agent's internal
 * bearer token, as the contract says.
 */
import type { OutboundHandler } from "@cloudflare/containers";
import { getSandbox, Sandbox } from "@cloudflare/sandbox";
import type { Env } from "./env";
import { registry } from "./registry";
import { constantTimeEqual, bearerToken } from "./auth";

export { SANDBOX_HOST } from "./agent-env";
export const DEFAULT_OUTPUT_LIMIT = 1024 * 1024;
export const TRUNCATION_MARKER = "\n[flare: output truncated]\n";
/** Longer commands would exceed Linux's single-argument limit in the wrapper. */
export const MAX_COMMAND_BYTES = 100_000;
export const MAX_TIMEOUT_MS = 6 * 3600_000;
/** Seconds the client should wait before retrying an exec whose container could not start. */
export const RETRY_AFTER_SECONDS = 1;

/** Storage key of an Exec sandbox's network setting, fixed at its first exec. */
export const NETWORK_KEY = "flare-network";
/** How long an Exec container outlives the idle_ttl of its lease before it may sleep. */
export const SLEEP_MARGIN_S = 60;
/** Longest idle_ttl an exec request may ask for (a week). */
export const MAX_IDLE_TTL_MS = 7 * 24 * 3600_000;

/**
 * The Exec sandbox container class (Sandbox SDK); the image is
 * images/exec/Dockerfile. No network unless the lease's profile allows it
 * (`sandboxes.<profile>.network`): the SDK's default is Internet on.
 */
export class Exec extends Sandbox<Env> {
  override enableInternet = false;

  constructor(ctx: ConstructorParameters<typeof Sandbox<Env>>[0], env: Env) {
    super(ctx, env);
    void this.ctx.blockConcurrencyWhile(async () => {
      const network = await this.ctx.storage.get<boolean>(NETWORK_KEY);
      if (network !== undefined) this.enableInternet = network;
    });
  }

  /**
   * RPC, before every exec: the lease profile's network setting. The first
   * call fixes it for the sandbox's life (its container starts with it); a
   * later, different value is refused rather than silently ignored.
   */
  async setNetwork(network: boolean): Promise<boolean> {
    const stored = await this.ctx.storage.get<boolean>(NETWORK_KEY);
    if (stored === undefined) {
      await this.ctx.storage.put(NETWORK_KEY, network);
      this.enableInternet = network;
      return true;
    }
    return stored === network;
  }
}

/** The Sandbox SDK's `sleepAfter` for a lease: never sleep while flared may still use it. */
export function sleepAfterFor(idleTtlMs: number | null, env: Env): string {
  const fallback = Number(env.SANDBOX_MAX_IDLE_MS ?? "");
  const ms = idleTtlMs ?? (Number.isFinite(fallback) && fallback > 0 ? fallback : 7_800_000);
  return `${Math.ceil(ms / 1000) + SLEEP_MARGIN_S}s`;
}

const ID_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export function validSandboxId(id: string): boolean {
  return ID_RE.test(id);
}

export interface ExecRequest {
  command: string;
  cwd: string;
  env: Record<string, string>;
  timeout_ms: number;
  stdin: string | null;
  output_limit: number;
  /** The lease profile's `network`; absent means no network. */
  network: boolean;
  /** The lease profile's `idle_ttl` in ms; absent means the longest any profile allows. */
  idle_ttl_ms: number | null;
}

export interface ExecResponse {
  exit_code: number;
  stdout: string;
  stderr: string;
  duration_ms: number;
  truncated: boolean;
  timed_out: boolean;
}

class BadRequest extends Error {}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function positiveInt(v: unknown, name: string, fallback: number, max: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new BadRequest(`${name} must be a positive integer`);
  }
  if (v > max) throw new BadRequest(`${name} must be at most ${max}`);
  return v;
}

function parseNetwork(v: unknown): boolean {
  if (v === undefined || v === null) return false;
  if (typeof v !== "boolean") throw new BadRequest("network must be a boolean");
  return v;
}

/** Validate an exec body; throws BadRequest with a message fit for the client. */
export function parseExecRequest(body: unknown): ExecRequest {
  if (!isRecord(body)) throw new BadRequest("body must be a JSON object");
  const { command, cwd, env, stdin, network } = body;
  if (typeof command !== "string" || command.length === 0) {
    throw new BadRequest("command must be a non-empty string");
  }
  if (new TextEncoder().encode(command).length > MAX_COMMAND_BYTES) {
    throw new BadRequest(`command must be at most ${MAX_COMMAND_BYTES} bytes`);
  }
  if (typeof cwd !== "string" || !cwd.startsWith("/")) {
    throw new BadRequest("cwd must be an absolute path");
  }
  const vars: Record<string, string> = {};
  if (env !== undefined && env !== null) {
    if (!isRecord(env)) throw new BadRequest("env must be an object of strings");
    for (const [k, v] of Object.entries(env)) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new BadRequest(`env name ${JSON.stringify(k)} is not valid`);
      if (typeof v !== "string") throw new BadRequest(`env ${k} must be a string`);
      vars[k] = v;
    }
  }
  if (stdin !== undefined && stdin !== null && typeof stdin !== "string") {
    throw new BadRequest("stdin must be a string or null");
  }
  return {
    command,
    cwd,
    env: vars,
    timeout_ms: positiveInt(body.timeout_ms, "timeout_ms", 120_000, MAX_TIMEOUT_MS),
    stdin: typeof stdin === "string" ? stdin : null,
    output_limit: positiveInt(body.output_limit, "output_limit", DEFAULT_OUTPUT_LIMIT, 64 * 1024 * 1024),
    network: parseNetwork(network),
    idle_ttl_ms: body.idle_ttl_ms === undefined || body.idle_ttl_ms === null ? null : positiveInt(body.idle_ttl_ms, "idle_ttl_ms", 0, MAX_IDLE_TTL_MS),
  };
}

/** POSIX single quotes. */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * The command the sandbox runs: create and enter cwd, run `bash -c COMMAND`
 * under coreutils timeout (which signals its whole process group, so children
 * die too; 124 on timeout), stdin from a file or /dev/null, in a fresh bash so
 * nothing leaks into the SDK's session shell.
 */
export function wrapCommand(req: ExecRequest, stdinPath: string | null): string {
  const script =
    'mkdir -p -- "$1" && cd -- "$1" || exit 126; ' +
    'timeout -k 2 "$2" bash -c "$3" < "$4"; rc=$?; ' +
    '[ "$4" = /dev/null ] || rm -f -- "$4"; exit $rc';
  const secs = (req.timeout_ms / 1000).toFixed(3);
  return ["bash", "-c", shellQuote(script), "flare", shellQuote(req.cwd), secs, shellQuote(req.command), shellQuote(stdinPath ?? "/dev/null")].join(" ");
}

/** Cut to `limit` UTF-8 bytes (invalid bytes replaced), with the marker when cut. */
export function limitOutput(text: string, limit: number): { text: string; cut: boolean } {
  const bytes = new TextEncoder().encode(text);
  if (bytes.length <= limit) return { text, cut: false };
  return { text: new TextDecoder().decode(bytes.subarray(0, limit)) + TRUNCATION_MARKER, cut: true };
}

const UNAVAILABLE_SIGNS = [
  "there is no container instance",
  "maximum number of running container instances exceeded",
  "container unavailable",
  "failed to start container",
  "container is not running",
  "container did not start",
];

/** True when an error says the sandbox container could not be started (so nothing ran). */
export function isStartFailure(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e != null && depth < 8; depth++) {
    if (typeof e === "object") {
      const o = e as { name?: unknown; code?: unknown; message?: unknown; cause?: unknown };
      if (o.name === "ContainerUnavailableError" || o.code === "CONTAINER_UNAVAILABLE") return true;
      const msg = typeof o.message === "string" ? o.message.toLowerCase() : "";
      if (UNAVAILABLE_SIGNS.some((s) => msg.includes(s))) return true;
      e = o.cause;
    } else {
      const msg = String(e).toLowerCase();
      return UNAVAILABLE_SIGNS.some((s) => msg.includes(s));
    }
  }
  return false;
}

function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

function describe(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.length > 300 ? `${msg.slice(0, 300)}…` : msg;
}

async function execIn(env: Env, id: string, req: ExecRequest): Promise<Response> {
  const sandbox = getSandbox(env.Exec, id, { sleepAfter: sleepAfterFor(req.idle_ttl_ms, env) });
  let sameNetwork: boolean;
  try {
    // Recorded before the container exists: a crash after this leaves a record, not a leak.
    await registry(env).touch(id);
    sameNetwork = await sandbox.setNetwork(req.network);
  } catch (err) {
    // A Durable Object that failed (reset, overloaded): nothing ran, retryable.
    return json({ error: `sandbox ${id} is not available: ${describe(err)}`, started: false }, 503, {
      "Retry-After": String(RETRY_AFTER_SECONDS),
    });
  }
  if (!sameNetwork) {
    return json({ error: `sandbox ${id} was created with network ${!req.network}; its profile now says ${req.network}`, started: false }, 409);
  }
  let stdinPath: string | null = null;
  const started = Date.now();
  try {
    if (req.stdin !== null) {
      stdinPath = `/tmp/.flare-stdin-${crypto.randomUUID()}`;
      await sandbox.writeFile(stdinPath, req.stdin);
    }
  } catch (err) {
    // Nothing ran yet whatever the cause: retryable when the container did not start.
    if (isStartFailure(err)) {
      return json({ error: "sandbox container unavailable", started: false }, 503, { "Retry-After": String(RETRY_AFTER_SECONDS) });
    }
    return json({ error: `cannot pass stdin to the sandbox: ${describe(err)}`, started: false }, 503, {
      "Retry-After": String(RETRY_AFTER_SECONDS),
    });
  }
  let result: { exitCode: number; stdout: string; stderr: string };
  try {
    result = await sandbox.exec(wrapCommand(req, stdinPath), {
      env: req.env,
      timeout: req.timeout_ms + 10_000,
    });
  } catch (err) {
    if (isStartFailure(err)) {
      return json({ error: "sandbox container unavailable", started: false }, 503, { "Retry-After": String(RETRY_AFTER_SECONDS) });
    }
    return json({ error: `exec outcome unknown: ${describe(err)}` }, 502);
  }
  const duration = Date.now() - started;
  const out = limitOutput(result.stdout ?? "", req.output_limit);
  const errOut = limitOutput(result.stderr ?? "", req.output_limit);
  const body: ExecResponse = {
    exit_code: result.exitCode,
    stdout: out.text,
    stderr: errOut.text,
    duration_ms: duration,
    truncated: out.cut || errOut.cut,
    timed_out: result.exitCode === 124 && duration >= req.timeout_ms - 50,
  };
  return json(body);
}

async function destroy(env: Env, id: string): Promise<Response> {
  const reg = registry(env);
  if (!(await reg.has(id))) return json({ id, destroyed: false });
  try {
    await getSandbox(env.Exec, id).destroy();
  } catch (err) {
    // Kept in the registry so a retry (flared's, or the cron sweep) finishes it.
    return json({ error: `cannot destroy sandbox: ${describe(err)}` }, 502);
  }
  await reg.remove(id);
  return json({ id, destroyed: true });
}

/** The contract's three endpoints; `expectedToken` is the Agent's internal token. */
export async function handleSandboxRequest(request: Request, env: Env, expectedToken: string): Promise<Response> {
  const presented = bearerToken(request.headers.get("Authorization"));
  if (!presented || !expectedToken || !(await constantTimeEqual(presented, expectedToken))) {
    return json({ error: "missing or wrong bearer token" }, 401);
  }
  const url = new URL(request.url);
  const parts = url.pathname.split("/").filter(Boolean);
  if (parts[0] !== "internal" || parts[1] !== "sandboxes") return json({ error: "not found" }, 404);

  if (parts.length === 2) {
    if (request.method !== "GET") return json({ error: "method not allowed" }, 405);
    const prefix = url.searchParams.get("prefix") ?? "";
    return json({ sandboxes: await registry(env).list(prefix) });
  }
  const id = decodeURIComponent(parts[2] ?? "");
  if (!validSandboxId(id)) return json({ error: `invalid sandbox id: ${id.slice(0, 80)}` }, 400);

  if (parts.length === 3) {
    if (request.method !== "DELETE") return json({ error: "method not allowed" }, 405);
    return destroy(env, id);
  }
  if (parts.length === 4 && parts[3] === "exec") {
    if (request.method !== "POST") return json({ error: "method not allowed" }, 405);
    let req: ExecRequest;
    try {
      req = parseExecRequest(await request.json());
    } catch (err) {
      const msg = err instanceof BadRequest ? err.message : "body must be valid JSON";
      return json({ error: msg }, 400);
    }
    return execIn(env, id, req);
  }
  return json({ error: "not found" }, 404);
}

/** Outbound handler for SANDBOX_HOST on the Agent container: the token is the Agent's own. */
export const sandboxOutbound: OutboundHandler = async (request, env, ctx) => {
  const e = env as Env;
  const agent = e.Agent.get(e.Agent.idFromString(ctx.containerId));
  const token = await agent.controlToken();
  return handleSandboxRequest(request, e, token);
};

/** Cron sweep: destroy sandboxes idle longer than any lease may live (bounded per tick). */
export async function sweepStale(env: Env, maxIdleMs: number, limit: number): Promise<string[]> {
  const reg = registry(env);
  const ids = await reg.stale(maxIdleMs, limit);
  const done: string[] = [];
  for (const id of ids) {
    try {
      await getSandbox(env.Exec, id).destroy();
      await reg.remove(id);
      done.push(id);
    } catch {
      // Left for the next tick.
    }
  }
  return done;
}
