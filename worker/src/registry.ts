/**
 * A record of every Exec sandbox this Worker created and has not destroyed.
 *
 * The Sandbox SDK cannot list sandboxes, so without this a sandbox whose
 * lease flared lost (a crash, a redeploy) would run, and cost, forever. An id
 * is recorded *before* its sandbox is first created, so a crash between the
 * two leaves a record to clean up rather than an unknown container. flared
 * lists its group's ids on start and destroys those it no longer holds; the
 * cron trigger also destroys any left idle longer than the longest lease
 * lifetime the YAML allows.
 */
import { DurableObject } from "cloudflare:workers";
import type { Env } from "./env";

export interface SandboxRecord {
  id: string;
  created_at: string;
  last_used_at: string;
}

/** The one registry instance's name. */
export const REGISTRY_NAME = "sandboxes";

export function registry(env: Env): DurableObjectStub<SandboxRegistry> {
  return env.Registry.getByName(REGISTRY_NAME);
}

function iso(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

export class SandboxRegistry extends DurableObject<Env> {
  /** Record a use of `id`; returns whether it was new. */
  async touch(id: string, now: number = Date.now()): Promise<boolean> {
    const key = `sbx:${id}`;
    const prev = await this.ctx.storage.get<SandboxRecord>(key);
    const rec: SandboxRecord = { id, created_at: prev?.created_at ?? iso(now), last_used_at: iso(now) };
    await this.ctx.storage.put(key, rec);
    return prev === undefined;
  }

  async has(id: string): Promise<boolean> {
    return (await this.ctx.storage.get(`sbx:${id}`)) !== undefined;
  }

  /** Forget `id`; returns whether it was recorded. */
  async remove(id: string): Promise<boolean> {
    return this.ctx.storage.delete(`sbx:${id}`);
  }

  /** Live sandboxes sorted by id, optionally only ids starting with `prefix`. */
  async list(prefix = ""): Promise<SandboxRecord[]> {
    const entries = await this.ctx.storage.list<SandboxRecord>({ prefix: `sbx:${prefix}` });
    return [...entries.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** Ids unused for longer than `maxIdleMs` (at most `limit`, oldest first). */
  async stale(maxIdleMs: number, limit: number, now: number = Date.now()): Promise<string[]> {
    const all = await this.list();
    return all
      .filter((r) => now - Date.parse(r.last_used_at) > maxIdleMs)
      .sort((a, b) => Date.parse(a.last_used_at) - Date.parse(b.last_used_at))
      .slice(0, limit)
      .map((r) => r.id);
  }
}
