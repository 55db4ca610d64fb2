/**
 * Test doubles at the container boundary.
 *
 * - Agent: the real Agent class (worker/src/agent.ts) whose `ctx.container`
 *   is a ContainerDouble (test/container-double.ts); inside that "container"
 *   runs a small in-memory flared control API: /healthz with the digest of
 *   the YAML it was started with (or was pushed), PUT /config, and an echo of
 *   every other request so tests see exactly what flared would receive. Like
 *   flared on TCP it accepts only the token the container was started with.
 * - FakeExec: the Sandbox SDK methods the Worker uses (exec, writeFile,
 *   destroy), carried out by real bash in bubblewrap on the Node side
 *   (test/exec-helper.ts); `setFault("unavailable")` makes it fail the way a
 *   container that cannot be admitted does.
 */
import { DurableObject } from "cloudflare:workers";
import { Agent as RealAgent } from "../src/agent";
import type { Env } from "../src/env";
import { ContainerDouble, type StartRecord, withContainer } from "./container-double";

export async function sha256Hex(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function fromBase64(b64: string): string {
  return new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
}

export interface SeenRequest {
  method: string;
  path: string;
  search: string;
  authorization: string | null;
  headers: Record<string, string>;
  body: string;
}

/** flared's control API inside the container double (state per container start). */
class InMemoryFlared {
  /** A streamed chat sends its first chunk, then waits for this before the rest. */
  private gate: Promise<void> = Promise.resolve();
  private openGate: () => void = () => undefined;
  holdStreams(): void {
    this.gate = new Promise((resolve) => (this.openGate = resolve));
  }
  releaseStreams(): void {
    this.openGate();
  }

  /** flared's relay to a bot's Hermes API: the answer names the bot and what it was asked. */
  chat(bot: string, body: string, session: string | null): Response {
    const req = JSON.parse(body) as { messages?: unknown; stream?: boolean };
    if (!Array.isArray(req.messages)) return Response.json({ error: "messages is required (a list)" }, { status: 400 });
    const last = (req.messages.at(-1) as { content?: string } | undefined)?.content ?? "";
    const answer = `${bot} heard: ${last}`;
    const headers = { "X-Hermes-Session-Id": session ?? "session-new" };
    if (!req.stream) {
      return Response.json(
        { object: "chat.completion", model: "hermes-model", choices: [{ index: 0, message: { role: "assistant", content: answer }, finish_reason: "stop" }] },
        { headers },
      );
    }
    const enc = new TextEncoder();
    const event = (delta: object, finish: string | null = null) =>
      enc.encode(`data: ${JSON.stringify({ object: "chat.completion.chunk", choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`);
    const gate = this.gate;
    const [first, rest] = [answer.slice(0, 5), answer.slice(5)];
    const stream = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(event({ role: "assistant", content: first }));
        await gate;
        controller.enqueue(event({ content: rest }));
        controller.enqueue(event({}, "stop"));
        controller.enqueue(enc.encode("data: [DONE]\n\n"));
        controller.close();
      },
    });
    return new Response(stream, { headers: { ...headers, "Content-Type": "text/event-stream" } });
  }

  seen: SeenRequest[] = [];
  pushes = 0;
  digest: string | undefined;
  delayMs = 0;
  /** The flared version /status reports (the image's). */
  version = "0.1.0";
  /** When set, every answer is this text with status 500 (not JSON). */
  plainError: string | null = null;
  private startsSeen = 0;

  async handle(req: Request, started: StartRecord, starts: number): Promise<Response> {
    if (starts !== this.startsSeen) {
      // A new container: flared reads the YAML it was given.
      this.startsSeen = starts;
      this.digest = await sha256Hex(fromBase64(started.env.FLARE_CONFIG_B64 ?? ""));
    }
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    const url = new URL(req.url);
    const body = req.method === "GET" || req.method === "HEAD" ? "" : await req.text();
    const seen: SeenRequest = {
      method: req.method,
      path: url.pathname,
      search: url.search,
      authorization: req.headers.get("Authorization"),
      headers: Object.fromEntries(req.headers),
      body,
    };
    this.seen.push(seen);
    if (this.plainError !== null) return new Response(this.plainError, { status: 500, headers: { "Content-Type": "text/plain" } });
    if (url.pathname === "/healthz") {
      return Response.json({ ok: true, config_digest: this.digest, group: started.env.FLARE_GROUP });
    }
    if (req.headers.get("Authorization") !== `Bearer ${started.env.FLARE_CONTROL_TOKEN}`) {
      return Response.json({ error: "missing or wrong bearer token" }, { status: 401 });
    }
    if (url.pathname === "/config" && req.method === "PUT") {
      this.digest = await sha256Hex(body);
      this.pushes++;
      return Response.json({ applied: true, config_digest: this.digest });
    }
    const chat = /^\/bots\/([^/]+)\/chat\/completions$/.exec(url.pathname);
    if (chat && req.method === "POST") return this.chat(decodeURIComponent(chat[1]!), body, req.headers.get("X-Hermes-Session-Id"));
    if (url.pathname === "/bots/nobody/restart") {
      return Response.json({ error: "no bot named 'nobody'" }, { status: 404 });
    }
    if (url.pathname === "/status") return Response.json({ flared: { ...seen, version: this.version } });
    return Response.json({ flared: seen });
  }
}

/**
 * The real Agent with a container double. Named `Agent` on purpose: the
 * library keys its outbound handlers (`Agent.outboundByHost`) by class name.
 */
export class Agent extends RealAgent {
  readonly box: ContainerDouble;
  readonly flared: InMemoryFlared;

  constructor(ctx: ConstructorParameters<typeof RealAgent>[0], env: Env) {
    const flared = new InMemoryFlared();
    const box: ContainerDouble = new ContainerDouble((req, _port, started) => flared.handle(req, started, box.starts.length));
    super(withContainer(ctx, box), env);
    this.box = box;
    this.flared = flared;
  }

  // Test controls and probes (RPC).
  async seen(): Promise<SeenRequest[]> {
    return this.flared.seen;
  }
  async probe(): Promise<{ starts: number; pushes: number; digest: string | undefined; envVars: Record<string, string> | undefined; running: boolean }> {
    return {
      starts: this.box.starts.length,
      pushes: this.flared.pushes,
      digest: this.flared.digest,
      envVars: this.box.starts.at(-1)?.env,
      running: this.box.running,
    };
  }
  async setDigest(digest: string): Promise<void> {
    this.flared.digest = digest;
  }
  /** Streamed chats stop after their first chunk until releaseStreams(). */
  async holdStreams(): Promise<void> {
    this.flared.holdStreams();
  }
  async releaseStreams(): Promise<void> {
    this.flared.releaseStreams();
  }
  async setFlaredVersion(version: string): Promise<void> {
    this.flared.version = version;
  }
  async setDelay(ms: number): Promise<void> {
    this.flared.delayMs = ms;
  }
  async setPlainError(text: string | null): Promise<void> {
    this.flared.plainError = text;
  }
  /** Ports of the next starts listen only this long after the start (a slow cold start). */
  async setListenAfter(ms: number): Promise<void> {
    this.box.listenAfterMs = ms;
  }
  /** The next container start fails with this message (null: starts work again). */
  async setStartFault(message: string | null): Promise<void> {
    this.box.startFault = message;
  }
  /** The container's process exits on its own (this object learns it from monitor()). */
  async exitContainer(code: number): Promise<void> {
    this.box.exit(code);
  }
  /** A request from inside the container, through the library's outbound interception. */
  async fromContainer(url: string, init?: { method?: string; headers?: Record<string, string>; body?: string }): Promise<{ status: number; body: string }> {
    const res = await this.box.fromInside(url, init);
    return { status: res.status, body: await res.text() };
  }
  async intercepted(): Promise<{ http: string[]; https: string[]; all: boolean }> {
    return { http: [...this.box.http.keys()].sort(), https: [...this.box.https.keys()].sort(), all: this.box.all !== null };
  }
}

const HELPER = "http://exec-helper.test";
const UNAVAILABLE = "There is no container instance that can be provided to this Durable Object, try again later";

export class FakeExec extends DurableObject<Env> {
  /** A key per object lifetime: the Node side keeps this sandbox's files under it. */
  private async key(): Promise<string> {
    let key = await this.ctx.storage.get<string>("key");
    if (!key) {
      key = crypto.randomUUID();
      await this.ctx.storage.put("key", key);
    }
    return key;
  }

  private async helper(path: string, body: object): Promise<Record<string, unknown>> {
    if ((await this.ctx.storage.get<string>("fault")) === "unavailable") throw new Error(UNAVAILABLE);
    const res = await fetch(`${HELPER}${path}`, { method: "POST", body: JSON.stringify({ key: await this.key(), ...body }) });
    const data = (await res.json()) as Record<string, unknown>;
    if (!res.ok) throw new Error(String(data.error));
    return data;
  }

  // Sandbox SDK surface used by the Worker (through getSandbox).
  async configure(configuration: { sleepAfter?: string | number }): Promise<void> {
    if (configuration.sleepAfter !== undefined) await this.ctx.storage.put("sleepAfter", configuration.sleepAfter);
  }
  async setNetwork(network: boolean): Promise<boolean> {
    if ((await this.ctx.storage.get<string>("fault")) === "broken-object") throw new Error("Durable Object reset because its code was updated.");
    const stored = await this.ctx.storage.get<boolean>("network");
    if (stored === undefined) await this.ctx.storage.put("network", network);
    return stored === undefined || stored === network;
  }
  async exec(command: string, options: { env?: Record<string, string>; timeout?: number } = {}) {
    await this.ctx.storage.put("execs", ((await this.ctx.storage.get<number>("execs")) ?? 0) + 1);
    const r = await this.helper("/exec", { command, env: options.env ?? {}, timeoutMs: options.timeout ?? 120_000 });
    const exitCode = Number(r.exitCode);
    return { success: exitCode === 0, exitCode, stdout: String(r.stdout), stderr: String(r.stderr), command, duration: 0, timestamp: new Date().toISOString() };
  }
  async writeFile(path: string, content: string): Promise<{ success: boolean }> {
    await this.helper("/write", { path, content });
    return { success: true };
  }
  async destroy(): Promise<void> {
    if ((await this.ctx.storage.get<string>("fault")) === "undestroyable") throw new Error("destroy failed (test fault)");
    const key = await this.ctx.storage.get<string>("key");
    if (key) await fetch(`${HELPER}/destroy`, { method: "POST", body: JSON.stringify({ key }) });
    await this.ctx.storage.deleteAll();
    await this.ctx.storage.put("destroyed", true);
  }

  // Test controls.
  async setFault(fault: "unavailable" | "undestroyable" | "broken-object" | null): Promise<void> {
    await this.ctx.storage.put("fault", fault);
  }
  async stats(): Promise<{ execs: number; destroyed: boolean; sleepAfter: string | number | undefined; network: boolean | undefined }> {
    return {
      execs: (await this.ctx.storage.get<number>("execs")) ?? 0,
      destroyed: (await this.ctx.storage.get<boolean>("destroyed")) ?? false,
      sleepAfter: await this.ctx.storage.get<string | number>("sleepAfter"),
      network: await this.ctx.storage.get<boolean>("network"),
    };
  }
}

/** The test Worker's env: the real bindings with the doubles' extra methods visible. */
export type TestEnv = Omit<Env, "Agent" | "Exec"> & {
  Agent: DurableObjectNamespace<Agent>;
  Exec: DurableObjectNamespace<FakeExec>;
  TEST_ACCESS_PRIVATE_JWK: string;
};
