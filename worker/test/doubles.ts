/**
 * Test doubles at the Durable Object boundary: workerd cannot run containers
 * without Docker, so the Agent and Exec classes are replaced by objects with
 * the same methods the Worker calls on them.
 *
 * - FakeAgent: what `Agent.fetch` does up to the container (identity, env,
 *   the control request with the internal token, using the real helpers),
 *   then a small in-memory flared control API in place of the container:
 *   /healthz with the digest of the config it runs, PUT /config, and an echo
 *   of every other request so tests see exactly what flared would receive.
 * - FakeExec: the Sandbox SDK methods the Worker uses (exec, writeFile,
 *   destroy), carried out by real bash in bubblewrap on the Node side
 *   (test/exec-helper.ts); `setFault("unavailable")` makes it fail the way a
 *   container that cannot be admitted does.
 */
import { DurableObject } from "cloudflare:workers";
import { agentEnvVars, agentIdentity, CONFIG_YAML, GROUP_HEADER, toControlRequest, TOKEN_KEY } from "../src/agent";
import type { Env } from "../src/env";

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

export class FakeAgent extends DurableObject<Env> {
  override async fetch(request: Request): Promise<Response> {
    const { token, group } = await agentIdentity(this.ctx.storage, request.headers.get(GROUP_HEADER));
    if ((await this.ctx.storage.get<boolean>("down")) === true) {
      throw new Error("container failed to start (test fault)");
    }
    if (!(await this.ctx.storage.get<boolean>("running"))) {
      // "Start the container" with the environment the real Agent would pass.
      const envVars = agentEnvVars(this.env, group, token, CONFIG_YAML);
      await this.ctx.storage.put({
        running: true,
        starts: ((await this.ctx.storage.get<number>("starts")) ?? 0) + 1,
        envVars,
        digest: await sha256Hex(fromBase64(envVars.FLARE_CONFIG_B64 ?? "")),
      });
    }
    const delay = (await this.ctx.storage.get<number>("delayMs")) ?? 0;
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    return this.flared(toControlRequest(request, token), token);
  }

  /** The in-memory flared: checks the internal token like flared does on TCP. */
  private async flared(req: Request, token: string): Promise<Response> {
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
    const log = (await this.ctx.storage.get<SeenRequest[]>("seen")) ?? [];
    log.push(seen);
    await this.ctx.storage.put("seen", log);
    if (url.pathname === "/healthz") {
      return Response.json({ ok: true, config_digest: await this.ctx.storage.get("digest"), group: await this.ctx.storage.get("group") });
    }
    if (req.headers.get("Authorization") !== `Bearer ${token}`) {
      return Response.json({ error: "missing or wrong bearer token" }, { status: 401 });
    }
    if (url.pathname === "/config" && req.method === "PUT") {
      const digest = await sha256Hex(body);
      await this.ctx.storage.put("digest", digest);
      await this.ctx.storage.put("pushes", ((await this.ctx.storage.get<number>("pushes")) ?? 0) + 1);
      return Response.json({ applied: true, config_digest: digest });
    }
    if (url.pathname === "/bots/nobody/restart") {
      return Response.json({ error: "no bot named 'nobody'" }, { status: 404 });
    }
    return Response.json({ flared: seen });
  }

  async restart(): Promise<{ restarting: boolean }> {
    const running = (await this.ctx.storage.get<boolean>("running")) === true;
    await this.ctx.storage.put("running", false);
    return { restarting: running };
  }
  async controlToken(): Promise<string> {
    return (await this.ctx.storage.get<string>(TOKEN_KEY)) ?? "";
  }
  async seen(): Promise<SeenRequest[]> {
    return (await this.ctx.storage.get<SeenRequest[]>("seen")) ?? [];
  }
  async state(): Promise<{ starts: number; pushes: number; digest: string | undefined; envVars: Record<string, string> | undefined }> {
    const s = this.ctx.storage;
    return {
      starts: (await s.get<number>("starts")) ?? 0,
      pushes: (await s.get<number>("pushes")) ?? 0,
      digest: await s.get<string>("digest"),
      envVars: await s.get<Record<string, string>>("envVars"),
    };
  }
  async setDigest(digest: string): Promise<void> {
    await this.ctx.storage.put({ running: true, digest });
  }
  async setDelay(ms: number): Promise<void> {
    await this.ctx.storage.put("delayMs", ms);
  }
  async setDown(down: boolean): Promise<void> {
    await this.ctx.storage.put("down", down);
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
  async configure(_configuration: unknown): Promise<void> {}
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
  async setFault(fault: "unavailable" | "undestroyable" | null): Promise<void> {
    await this.ctx.storage.put("fault", fault);
  }
  async stats(): Promise<{ execs: number; destroyed: boolean }> {
    return {
      execs: (await this.ctx.storage.get<number>("execs")) ?? 0,
      destroyed: (await this.ctx.storage.get<boolean>("destroyed")) ?? false,
    };
  }
}

/** The test Worker's env: the real bindings with the doubles' extra methods visible. */
export type TestEnv = Omit<Env, "Agent" | "Exec"> & {
  Agent: DurableObjectNamespace<FakeAgent>;
  Exec: DurableObjectNamespace<FakeExec>;
  TEST_ACCESS_PRIVATE_JWK: string;
};
