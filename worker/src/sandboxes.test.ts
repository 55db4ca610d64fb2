/**
 * The sandbox contract (tests/contracts/sandbox/*.json) replayed against the
 * Worker's handler, each file on a fresh registry and fresh sandboxes; the
 * Exec containers are the bubblewrap-backed double (test/doubles.ts).
 */
import { env, reset, runInDurableObject } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import { ContainerDouble, withContainer } from "../test/container-double";
import type { TestEnv } from "../test/doubles";
import type { Env } from "./env";
import { registry } from "./registry";
import {
  Exec,
  handleSandboxRequest,
  isStartFailure,
  limitOutput,
  parseExecRequest,
  sandboxOutbound,
  SLEEP_MARGIN_S,
  sweepStale,
  TRUNCATION_MARKER,
  validSandboxId,
} from "./sandboxes";

const T = env as unknown as TestEnv & { Host: DurableObjectNamespace };
const E = env as unknown as Env;
const TOKEN = "contract-test-token";

interface Exchange {
  request: { method: string; path: string; headers: Record<string, string>; body?: unknown };
  response: { status: number; body: unknown; headers?: Record<string, string>; vary?: string[] };
}
interface Example {
  name: string;
  description: string;
  exchanges: Exchange[];
}

const files: Record<string, Example> = import.meta.glob<Example>("../../tests/contracts/sandbox/*.json", { eager: true, import: "default" });
const examples = Object.values(files);

function jsonType(v: unknown): string {
  return v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
}

/** Replace the values of `vary` fields in `actual` by the example's when their JSON types agree. */
function applyVary(actual: unknown, expected: unknown, vary: string[]): unknown {
  const a = structuredClone(actual) as Record<string, unknown>;
  for (const path of vary) {
    const listMatch = /^(\w+)\[\]\.(\w+)$/.exec(path);
    if (listMatch) {
      const [, list, field] = listMatch as unknown as [string, string, string];
      const al = a[list] as Record<string, unknown>[] | undefined;
      const el = (expected as Record<string, Record<string, unknown>[]>)[list];
      if (!Array.isArray(al) || !Array.isArray(el)) continue;
      al.forEach((item, i) => {
        const want = el[i]?.[field] ?? el[0]?.[field];
        if (want !== undefined && jsonType(item[field]) === jsonType(want)) item[field] = want;
      });
      continue;
    }
    const want = (expected as Record<string, unknown>)[path];
    if (path in a && jsonType(a[path]) === jsonType(want)) a[path] = want;
  }
  return a;
}

/** The example whose exchanges need a fault: the id's sandbox cannot start. */
async function injectFaults(example: Example): Promise<void> {
  if (example.name !== "exec-unavailable") return;
  for (const ex of example.exchanges) {
    const id = ex.request.path.split("/")[3];
    if (id) await T.Exec.getByName(id).setFault("unavailable");
  }
}

describe("sandbox contract", () => {
  beforeEach(async () => {
    await reset();
  });

  it("has examples to replay", () => {
    expect(examples.length).toBeGreaterThanOrEqual(10);
  });

  for (const example of examples) {
    it(`${example.name}: ${example.description}`, async () => {
      await injectFaults(example);
      for (const [i, ex] of example.exchanges.entries()) {
        const init: RequestInit = { method: ex.request.method, headers: ex.request.headers };
        if (ex.request.body !== undefined) init.body = JSON.stringify(ex.request.body);
        const req = new Request(`http://sandboxes.flare.internal${ex.request.path}`, init);
        const res = await handleSandboxRequest(req, E, TOKEN);
        const body = await res.json();
        const where = `${example.name} exchange ${i}: ${ex.request.method} ${ex.request.path}`;
        expect(res.status, where).toBe(ex.response.status);
        for (const [k, v] of Object.entries(ex.response.headers ?? {})) {
          expect(res.headers.get(k), `${where} header ${k}`).toBe(v);
        }
        expect(applyVary(body, ex.response.body, ex.response.vary ?? []), where).toEqual(ex.response.body);
      }
    });
  }
});

describe("sandbox handler details", () => {
  beforeEach(async () => {
    await reset();
  });

  it("runs nothing when the token is wrong", async () => {
    const req = new Request("http://sandboxes.flare.internal/internal/sandboxes/fl-default-aaaaaaaaaaaa/exec", {
      method: "POST",
      headers: { Authorization: "Bearer nope" },
      body: JSON.stringify({ command: "true", cwd: "/workspace" }),
    });
    expect((await handleSandboxRequest(req, E, TOKEN)).status).toBe(401);
    expect(await T.Exec.getByName("fl-default-aaaaaaaaaaaa").stats()).toEqual({ execs: 0, destroyed: false });
    expect(await registry(E).list()).toEqual([]);
  });

  it("the outbound handler checks the token of the Agent container that calls it", async () => {
    const agent = T.Agent.getByName("default");
    await agent.fetch("http://agent/healthz", { headers: { "X-Flare-Group": "default" } });
    const token = await agent.controlToken();
    expect(token).toMatch(/^[0-9a-f]{64}$/);
    const ctx = { containerId: agent.id.toString(), className: "Agent" };
    const list = (auth: string) =>
      sandboxOutbound(new Request("http://sandboxes.flare.internal/internal/sandboxes", { headers: { Authorization: auth } }), E, ctx);
    expect((await list(`Bearer ${token}`)).status).toBe(200);
    expect((await list("Bearer contract-test-token")).status).toBe(401);
  });

  it("records a sandbox before running in it, and a failed destroy keeps the record", async () => {
    const id = "fl-default-bbbbbbbbbbbb";
    const exec = new Request(`http://x/internal/sandboxes/${id}/exec`, {
      method: "POST",
      headers: { Authorization: `Bearer ${TOKEN}` },
      body: JSON.stringify({ command: "true", cwd: "/workspace" }),
    });
    await T.Exec.getByName(id).setFault("unavailable");
    expect((await handleSandboxRequest(exec, E, TOKEN)).status).toBe(503);
    // The container might have been half-created: it stays recorded for cleanup.
    expect((await registry(E).list()).map((r) => r.id)).toEqual([id]);

    await T.Exec.getByName(id).setFault("undestroyable");
    const del = () => handleSandboxRequest(new Request(`http://x/internal/sandboxes/${id}`, { method: "DELETE", headers: { Authorization: `Bearer ${TOKEN}` } }), E, TOKEN);
    expect((await del()).status).toBe(502);
    expect((await registry(E).list()).map((r) => r.id)).toEqual([id]);
    await T.Exec.getByName(id).setFault(null);
    expect(await (await del()).json()).toEqual({ id, destroyed: true });
    expect(await registry(E).list()).toEqual([]);
  });

  it("a failing Exec or Registry object is the contract's JSON 503 with Retry-After, not a 500", async () => {
    const id = "fl-default-cccccccccccc";
    const exec = () =>
      new Request(`http://x/internal/sandboxes/${id}/exec`, {
        method: "POST",
        headers: { Authorization: `Bearer ${TOKEN}` },
        body: JSON.stringify({ command: "true", cwd: "/workspace" }),
      });
    await T.Exec.getByName(id).setFault("broken-object");
    const res = await handleSandboxRequest(exec(), E, TOKEN);
    expect(res.status).toBe(503);
    expect(res.headers.get("Retry-After")).toBe("1");
    expect(await res.json()).toMatchObject({ started: false, error: expect.stringContaining("not available") });
    expect((await T.Exec.getByName(id).stats()).execs).toBe(0);

    const brokenRegistry = {
      getByName: () => ({ touch: () => Promise.reject(new Error("Registry overloaded")) }),
    } as unknown as Env["Registry"];
    const res2 = await handleSandboxRequest(exec(), { ...E, Registry: brokenRegistry } as Env, TOKEN);
    expect(res2.status).toBe(503);
    expect(res2.headers.get("Retry-After")).toBe("1");
    expect(await res2.json()).toMatchObject({ started: false, error: expect.stringContaining("Registry overloaded") });
  });

  it("the cron sweep destroys only sandboxes idle past the limit, oldest first, bounded", async () => {
    const reg = registry(E);
    const now = Date.now();
    await reg.touch("fl-default-old1aaaaaaaa", now - 5 * 3600_000);
    await reg.touch("fl-default-old2aaaaaaaa", now - 4 * 3600_000);
    await reg.touch("fl-default-newaaaaaaaaa", now - 60_000);
    expect(await sweepStale(E, 3 * 3600_000, 1)).toEqual(["fl-default-old1aaaaaaaa"]);
    expect(await sweepStale(E, 3 * 3600_000, 10)).toEqual(["fl-default-old2aaaaaaaa"]);
    expect((await reg.list()).map((r) => r.id)).toEqual(["fl-default-newaaaaaaaaa"]);
    expect((await T.Exec.getByName("fl-default-old1aaaaaaaa").stats()).destroyed).toBe(true);
    expect((await T.Exec.getByName("fl-default-newaaaaaaaaa").stats()).destroyed).toBe(false);
  });

  it("an exec carries its lease profile's settings: no network unless allowed, sleepAfter past the idle_ttl", async () => {
    const run = (id: string, extra: object) =>
      handleSandboxRequest(
        new Request(`http://x/internal/sandboxes/${id}/exec`, {
          method: "POST",
          headers: { Authorization: `Bearer ${TOKEN}` },
          body: JSON.stringify({ command: "true", cwd: "/workspace", ...extra }),
        }),
        E,
        TOKEN,
      );
    const offline = "fl-default-offlineaaaaa";
    expect((await run(offline, { idle_ttl_ms: 3 * 3600_000 })).status).toBe(200);
    // The profile's idle_ttl (3 h) plus a margin, not the SDK's 10 minutes.
    expect(await T.Exec.getByName(offline).stats()).toMatchObject({ network: false, sleepAfter: `${3 * 3600 + SLEEP_MARGIN_S}s` });
    const online = "fl-default-onlineaaaaaa";
    expect((await run(online, { network: true, idle_ttl_ms: 600_000 })).status).toBe(200);
    expect(await T.Exec.getByName(online).stats()).toMatchObject({ network: true, sleepAfter: `${600 + SLEEP_MARGIN_S}s` });
    // A sandbox keeps the network it was created with.
    const flip = await run(offline, { network: true });
    expect(flip.status).toBe(409);
    expect((await T.Exec.getByName(offline).stats()).execs).toBe(1);
    // Without an idle_ttl (an older flared): the longest lease any profile allows.
    const old = "fl-default-olderaaaaaaa";
    expect((await run(old, {})).status).toBe(200);
    expect((await T.Exec.getByName(old).stats()).sleepAfter).toBe(`${Number(E.SANDBOX_MAX_IDLE_MS) / 1000 + SLEEP_MARGIN_S}s`);
    expect(() => parseExecRequest({ command: "x", cwd: "/", network: "yes" })).toThrow("network must be a boolean");
    expect(() => parseExecRequest({ command: "x", cwd: "/", idle_ttl_ms: -1 })).toThrow("idle_ttl_ms");
  });

  it("validates ids and bodies", () => {
    expect(validSandboxId("fl-default-k3v9q2m7x1ab")).toBe(true);
    for (const bad of ["", "-a", "a-", "A", "a_b", "a".repeat(64), "a/b"]) expect(validSandboxId(bad)).toBe(false);
    expect(() => parseExecRequest({ command: "x", cwd: "rel" })).toThrow("cwd must be an absolute path");
    expect(() => parseExecRequest({ command: "x", cwd: "/", timeout_ms: 0 })).toThrow("timeout_ms");
    expect(() => parseExecRequest({ command: "x", cwd: "/", env: { "A-B": "1" } })).toThrow("env name");
    expect(() => parseExecRequest({ command: "x", cwd: "/", env: { A: 1 } })).toThrow("env A must be a string");
    expect(() => parseExecRequest({ command: "x", cwd: "/", stdin: 3 })).toThrow("stdin");
    expect(parseExecRequest({ command: "x", cwd: "/" })).toMatchObject({ timeout_ms: 120000, stdin: null, output_limit: 1048576, env: {} });
  });

  it("cuts output on UTF-8 bytes", () => {
    expect(limitOutput("héllo", 10)).toEqual({ text: "héllo", cut: false });
    const cut = limitOutput("éé", 3);
    expect(cut.cut).toBe(true);
    expect(cut.text).toBe(`é\uFFFD${TRUNCATION_MARKER}`);
  });

  it("recognises container start failures, also through RPC-flattened errors", () => {
    expect(isStartFailure(new Error("There is no container instance that can be provided to this Durable Object"))).toBe(true);
    expect(isStartFailure(Object.assign(new Error("x"), { name: "ContainerUnavailableError" }))).toBe(true);
    expect(isStartFailure(new Error("outer", { cause: new Error("Maximum number of running container instances exceeded") }))).toBe(true);
    expect(isStartFailure(new Error("Network connection lost"))).toBe(false);
  });
});

describe("the real Exec class", () => {
  it("starts its container without Internet unless the lease's profile allows it", async () => {
    for (const network of [false, true]) {
      await runInDurableObject(T.Host.getByName(`exec-${network}`), async (_host, state) => {
        const box = new ContainerDouble(async () => new Response("{}"));
        const exec = new Exec(withContainer(state as unknown as ConstructorParameters<typeof Exec>[0], box), E);
        expect(await exec.setNetwork(network)).toBe(true);
        await exec.start();
        expect(box.starts.map((s) => s.enableInternet)).toEqual([network]);
        // A second object on the same storage (after an eviction) remembers it.
        box.exit(0);
        const again = new Exec(withContainer(state as unknown as ConstructorParameters<typeof Exec>[0], box), E);
        await state.blockConcurrencyWhile(async () => {});
        await again.start();
        expect(box.starts.map((s) => s.enableInternet)).toEqual([network, network]);
      });
    }
  });
});
