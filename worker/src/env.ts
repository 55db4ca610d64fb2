/**
 * The Worker's bindings and vars. wrangler.toml (rendered by `flared render
 * wrangler` from hermes-flare.yaml) declares every one of them; secrets are
 * set with `wrangler secret put` and are optional here so that a missing one
 * is reported clearly instead of failing at import time.
 */
import type { Agent } from "./agent";
import type { SandboxRegistry } from "./registry";
import type { Exec } from "./sandboxes";

export interface Env {
  /** Agent containers: one Durable Object (and container) per bot group, named by group. */
  Agent: DurableObjectNamespace<Agent>;
  /** Exec sandboxes (Sandbox SDK containers), one per flared lease id. */
  Exec: DurableObjectNamespace<Exec>;
  /** Every Exec sandbox this Worker created, so none leaks. */
  Registry: DurableObjectNamespace<SandboxRegistry>;

  /** JSON object bot name -> group, rendered from the YAML. */
  BOT_GROUPS: string;
  /** Comma-separated sandbox profile names (all run on Exec containers here). */
  SANDBOX_PROFILES?: string;
  /** Sandboxes idle longer than this (ms) are destroyed by the cron sweep. */
  SANDBOX_MAX_IDLE_MS?: string;
  /** R2 bucket name and optional account id (for the S3 endpoint flared uses). */
  R2_BUCKET_NAME: string;
  CF_ACCOUNT_ID?: string;
  /** Another S3 endpoint for the snapshot store instead of R2's (tests); empty on deploy. */
  R2_ENDPOINT?: string;
  /** The flared version that rendered this wrangler.toml: /api/status flags a container running another. */
  FLARED_VERSION?: string;
  /** Cloudflare Access for /api/* (both empty = Access off). */
  ACCESS_TEAM_DOMAIN?: string;
  ACCESS_AUD?: string;
  /** Comma-separated emails allowed through Access (empty = any the policy admits). */
  ACCESS_ALLOWED_EMAILS?: string;
  /** Comma-separated Client IDs of Access service tokens allowed (their JWTs carry no email). */
  ACCESS_ALLOWED_SERVICE_TOKENS?: string;
  /** Comma-separated secret names injected at egress instead of entering the container. */
  EGRESS_SECRETS?: string;

  /** The admin page's static files (flared/admin/static), served at /admin. */
  ADMIN_ASSETS?: Fetcher;

  /** R2 bucket of the snapshot store (flared uses its S3 API; the binding lets wrangler check it). */
  SNAPSHOTS?: R2Bucket;

  /** Secret: bearer token for /api/*. */
  API_TOKEN?: string;
  /** Secrets: R2 API token pair flared uses for the snapshot store. */
  R2_ACCESS_KEY_ID?: string;
  R2_SECRET_ACCESS_KEY?: string;

  /** Any other secret the YAML names as ${VAR}. */
  [name: string]: unknown;
}

/** What a request carries through the Worker's middleware. */
export interface AppVariables {
  /** Who made the request, as flared's audit log records it: an Access email, `service-token:<id>` or `api-token`. */
  actor: string;
}

export type AppEnv = { Bindings: Env; Variables: AppVariables };
