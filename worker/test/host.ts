/**
 * An empty Durable Object whose real state (storage, ctx.exports) a test
 * borrows to construct an Agent or Exec itself, e.g. to construct an Agent
 * whose container already runs, as after the object restarts.
 */
import { DurableObject } from "cloudflare:workers";
import type { Env } from "../src/env";

export class Host extends DurableObject<Env> {
  // A borrowed container class schedules alarms on this object's storage.
  override async alarm(): Promise<void> {}
}
