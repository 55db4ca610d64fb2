import { createExecutionContext, createScheduledController, env, reset, waitOnExecutionContext } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import type { TestEnv } from "../test/doubles";
import { CONFIG_YAML } from "./agent";
import type { Env } from "./env";
import worker from "./index";
import { registry } from "./registry";
import { runScheduled, sha256Hex } from "./scheduled";

const T = env as unknown as TestEnv;
const E = env as unknown as Env;
const FAST = { healthTimeoutMs: 300, pushTimeoutMs: 300, deadlineMs: 1_500 };

beforeEach(async () => {
  await reset();
});

describe("scheduled()", () => {
  it("starts every group's Agent and pushes nothing when flared runs the bundled YAML", async () => {
    const report = await runScheduled(E, FAST);
    expect(report.digest).toBe(await sha256Hex(CONFIG_YAML));
    expect(report.groups.map((g) => [g.group, g.action])).toEqual([
      ["default", "in-step"],
      ["research", "in-step"],
    ]);
    for (const g of ["default", "research"]) {
      expect(await T.Agent.getByName(g).probe()).toMatchObject({ starts: 1, pushes: 0 });
    }
  });

  it("pushes a changed YAML exactly once, then never again", async () => {
    const agent = T.Agent.getByName("default");
    await runScheduled(E, FAST);
    await agent.setDigest("0".repeat(64)); // flared runs an older YAML (before a redeploy)
    const first = await runScheduled(E, FAST);
    expect(first.groups[0]).toMatchObject({ group: "default", action: "pushed", from: "0".repeat(64), to: first.digest });
    expect(first.groups[1]).toMatchObject({ group: "research", action: "in-step" });
    const put = (await agent.seen()).filter((r) => r.method === "PUT");
    expect(put).toHaveLength(1);
    expect(put[0]).toMatchObject({ path: "/config", body: CONFIG_YAML });
    expect(put[0]!.headers["content-type"]).toBe("application/yaml");
    expect(put[0]!.authorization).toBe(`Bearer ${await agent.controlToken()}`);
    for (let i = 0; i < 3; i++) await runScheduled(E, FAST);
    expect((await agent.probe()).pushes).toBe(1);
    expect((await T.Agent.getByName("research").probe()).pushes).toBe(0);
  });

  it("finishes within its bound when a group's container hangs, and still serves the others", async () => {
    await runScheduled(E, FAST);
    await T.Agent.getByName("research").setDelay(60_000);
    await T.Agent.getByName("default").setDigest("1".repeat(64));
    const t0 = Date.now();
    const report = await runScheduled(E, FAST);
    const took = Date.now() - t0;
    expect(took).toBeLessThan(FAST.healthTimeoutMs + 1_000);
    expect(report.groups.find((g) => g.group === "research")).toMatchObject({ action: "unreachable" });
    expect(report.groups.find((g) => g.group === "default")).toMatchObject({ action: "pushed" });
  });

  it("the overall deadline caps the run even if every step is slow", async () => {
    await runScheduled(E, FAST);
    await T.Agent.getByName("default").setDelay(60_000);
    const t0 = Date.now();
    const report = await runScheduled(E, { healthTimeoutMs: 30_000, pushTimeoutMs: 30_000, deadlineMs: 400 });
    expect(Date.now() - t0).toBeLessThan(1_400);
    expect(report.timedOut).toBe(true);
    expect(report.groups.find((g) => g.group === "default")).toMatchObject({ action: "unreachable", error: "deadline reached" });
  });

  it("an unreachable Agent is reported, not thrown", async () => {
    await T.Agent.getByName("default").setStartFault("container failed to start (test fault)");
    const report = await runScheduled(E, FAST);
    expect(report.groups[0]).toMatchObject({ group: "default", action: "unreachable" });
  });

  it("sweeps sandboxes idle past the limit", async () => {
    await registry(E).touch("fl-default-idleaaaaaaa", Date.now() - 4 * 3600_000);
    await registry(E).touch("fl-default-busyaaaaaaa", Date.now());
    const report = await runScheduled(E, FAST);
    expect(report.swept).toEqual(["fl-default-idleaaaaaaa"]);
    expect((await registry(E).list()).map((r) => r.id)).toEqual(["fl-default-busyaaaaaaa"]);
  });

  it("is what the Worker's scheduled handler runs", async () => {
    await runScheduled(E, FAST);
    await T.Agent.getByName("research").setDigest("2".repeat(64));
    const ctx = createExecutionContext();
    await worker.scheduled!(createScheduledController({ scheduledTime: Date.now(), cron: "*/5 * * * *" }), E, ctx);
    await waitOnExecutionContext(ctx);
    expect((await T.Agent.getByName("research").probe()).pushes).toBe(1);
  });
});
