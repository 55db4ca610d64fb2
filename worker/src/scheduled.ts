/**
 * The cron trigger: short and bounded, by design. For each bot group it makes
 * sure the Agent container runs (any request starts it), asks flared's
 * /healthz for the digest of the config it runs, and when that differs from
 * the YAML bundled into this Worker, PUTs the bundled YAML to flared, which
 * validates and applies it without a restart. Then it destroys a few Exec
 * sandboxes idle past any lease's lifetime.
 *
 * Every call has a timeout and the whole run has a deadline, so a slow or
 * starting container can never make scheduled() overrun (moltworker dropped
 * its cron after slow work there overran the limit and reset the Durable
 * Object). Everything heavy (snapshots, cron jobs) happens in flared.
 *
 * A container that is not up yet gets a cold start's time to answer, not the
 * 5 s a running one gets: giving up earlier would leave a YAML redeployed
 * while the container was (re)starting to the next tick, or the one after.
 * A cron invocation may run for minutes, so the deadline covers that wait.
 */
import { CONFIG_YAML, COLD_START_TIMEOUT_MS } from "./agent";
import type { Env } from "./env";
import { allGroups, callAgent } from "./routes";
import { sweepStale } from "./sandboxes";

export interface ScheduledOptions {
  /** /healthz of a container already up. */
  healthTimeoutMs: number;
  /** /healthz of a container this call starts (or that is still starting). */
  startTimeoutMs: number;
  pushTimeoutMs: number;
  deadlineMs: number;
  sweepLimit: number;
}

export const DEFAULTS: ScheduledOptions = {
  healthTimeoutMs: 5_000,
  startTimeoutMs: COLD_START_TIMEOUT_MS + 5_000,
  pushTimeoutMs: 10_000,
  deadlineMs: COLD_START_TIMEOUT_MS + 25_000,
  sweepLimit: 10,
};

export type GroupOutcome =
  | { group: string; action: "in-step"; digest: string }
  | { group: string; action: "pushed"; from: string | null; to: string; status: number }
  | { group: string; action: "push-refused"; status: number; error: string }
  | { group: string; action: "unreachable"; error: string };

export interface ScheduledReport {
  digest: string;
  groups: GroupOutcome[];
  swept: string[];
  timedOut: boolean;
  ms: number;
}

export async function sha256Hex(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function message(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).slice(0, 300);
}

/** One group: health check, then a push when the digests differ. */
export async function syncGroup(env: Env, group: string, digest: string, opts: ScheduledOptions): Promise<GroupOutcome> {
  let running: string | null;
  try {
    const up = await env.Agent.getByName(group).isUp();
    const res = await callAgent(env, group, "GET", "/healthz", undefined, up ? opts.healthTimeoutMs : opts.startTimeoutMs);
    if (!res.ok) return { group, action: "unreachable", error: `healthz answered ${res.status}` };
    const body = (await res.json()) as { config_digest?: unknown };
    running = typeof body.config_digest === "string" ? body.config_digest : null;
  } catch (err) {
    return { group, action: "unreachable", error: message(err) };
  }
  if (running === digest) return { group, action: "in-step", digest };
  try {
    const res = await callAgent(env, group, "PUT", "/config", CONFIG_YAML, opts.pushTimeoutMs, "application/yaml");
    const text = await res.text();
    if (!res.ok) return { group, action: "push-refused", status: res.status, error: text.slice(0, 500) };
    return { group, action: "pushed", from: running, to: digest, status: res.status };
  } catch (err) {
    return { group, action: "unreachable", error: message(err) };
  }
}

export async function runScheduled(env: Env, options: Partial<ScheduledOptions> = {}): Promise<ScheduledReport> {
  const opts = { ...DEFAULTS, ...options };
  const started = Date.now();
  const digest = await sha256Hex(CONFIG_YAML);
  const groups = allGroups(env);
  const outcomes: GroupOutcome[] = groups.map((group) => ({ group, action: "unreachable", error: "deadline reached" }));
  let swept: string[] = [];

  const work = (async () => {
    await Promise.all(
      groups.map(async (g, i) => {
        outcomes[i] = await syncGroup(env, g, digest, opts);
      }),
    );
    const maxIdle = Number(env.SANDBOX_MAX_IDLE_MS ?? "");
    if (Number.isFinite(maxIdle) && maxIdle > 0) swept = await sweepStale(env, maxIdle, opts.sweepLimit);
  })();

  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<"deadline">((resolve) => {
    timer = setTimeout(() => resolve("deadline"), opts.deadlineMs);
  });
  const first = await Promise.race([work.then(() => "done" as const), deadline]);
  if (timer !== undefined) clearTimeout(timer);
  work.catch(() => undefined);

  const report: ScheduledReport = { digest, groups: outcomes, swept, timedOut: first === "deadline", ms: Date.now() - started };
  for (const o of report.groups) {
    console.log(`cron: group ${o.group}: ${o.action}${"error" in o ? ` (${o.error})` : ""}`);
  }
  return report;
}
