/**
 * A stand-in for workerd's `ctx.container` (the Container API a Durable Object
 * gets when its class has a container), for the tests: workerd starts real
 * containers only through a Docker engine and Cloudflare's network sidecar,
 * which these machines do not have. Everything above this boundary is real:
 * the `Agent` class, `@cloudflare/containers` (start, ports, monitor,
 * interception through `ctx.exports.ContainerProxy`), Durable Object storage.
 *
 * It behaves as workerd documents: `start()` is synchronous and refuses a
 * running container; `monitor()` settles when the container exits (rejecting
 * with the exit code's message when it is not 0); ports answer only while it
 * runs; interception calls record the Fetcher the library passes, so a test
 * can send a request "from inside the container" through it.
 */

export interface StartRecord {
  env: Record<string, string>;
  enableInternet: boolean;
  entrypoint: string[] | null;
}

/** What runs inside: answers a request to a port, given how the container was started. */
export type ContainerApp = (request: Request, port: number, started: StartRecord) => Promise<Response>;

export class ContainerDouble {
  running = false;
  readonly starts: StartRecord[] = [];
  readonly http = new Map<string, Fetcher>();
  readonly https = new Map<string, Fetcher>();
  all: Fetcher | null = null;
  /** When set, the next start fails this way (the container exits at once). */
  startFault: string | null = null;
  /** How long after a start its ports begin to listen (a cold start: image pull, flared's boot). */
  listenAfterMs = 0;
  private startedAt = 0;
  readonly signals: number[] = [];
  private exited: Promise<void> = Promise.resolve();
  private settle: ((code: number) => void) | null = null;

  constructor(private readonly app: ContainerApp) {}

  get current(): StartRecord | undefined {
    return this.running ? this.starts.at(-1) : undefined;
  }

  start(options: ContainerStartupOptions = {}): void {
    if (this.running) throw new Error("start() cannot be called on a container that is already running.");
    this.starts.push({
      env: { ...(options.env ?? {}) },
      enableInternet: options.enableInternet ?? false,
      entrypoint: options.entrypoint ?? null,
    });
    this.running = true;
    this.startedAt = Date.now();
    this.exited = new Promise<void>((resolve, reject) => {
      this.settle = (code) => (code === 0 ? resolve() : reject(new Error(`Container exited with unexpected exit code: ${code}`)));
    });
    this.exited.catch(() => undefined);
    if (this.startFault !== null) {
      const fault = this.startFault;
      this.running = false;
      this.settle = null;
      this.exited = Promise.reject(new Error(fault));
      this.exited.catch(() => undefined);
    }
  }

  monitor(): Promise<void> {
    return this.exited;
  }

  /** The container's main process exits (test control). */
  exit(code = 0): void {
    if (!this.running) return;
    this.running = false;
    this.settle?.(code);
    this.settle = null;
  }

  signal(signo: number): void {
    this.signals.push(signo);
    // The image's tini/supervisord/flared stop cleanly on SIGTERM and SIGINT.
    if (signo === 15 || signo === 2) this.exit(0);
    else if (signo === 9) this.exit(137);
  }

  async destroy(): Promise<void> {
    this.exit(137);
  }

  getTcpPort(port: number): Fetcher {
    const fetchPort = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
      const started = this.current;
      if (!started || Date.now() - this.startedAt < this.listenAfterMs) throw new Error("the container is not listening");
      const request = new Request(input, init);
      const host = new URL(request.url).hostname;
      // What the library probes for readiness: any answer means the port listens.
      if (host === "containerstarthealthcheck" || host === "ping") return new Response("ok");
      return this.app(request, port, started);
    };
    return { fetch: fetchPort, connect: () => Promise.reject(new Error("not in the double")) } as unknown as Fetcher;
  }

  async setInactivityTimeout(_durationMs: number | bigint): Promise<void> {}

  async interceptOutboundHttp(addr: string, binding: Fetcher): Promise<void> {
    this.http.set(addr, binding);
  }

  async interceptOutboundHttps(addr: string, binding: Fetcher): Promise<void> {
    this.https.set(addr, binding);
  }

  async interceptAllOutboundHttp(binding: Fetcher): Promise<void> {
    this.all = binding;
  }

  /** A request the container sends to `url` (as its network would route it). */
  fromInside(url: string, init?: RequestInit): Promise<Response> {
    const u = new URL(url);
    const binding = (u.protocol === "https:" ? this.https : this.http).get(u.hostname) ?? this.all;
    if (!binding) throw new Error(`nothing intercepts ${u.protocol}//${u.hostname}`);
    return binding.fetch(new Request(url, init));
  }
}

/**
 * The real `ctx` with the double as its `container` (an own property: workerd
 * only accepts its own DurableObjectState object, so `ctx` itself is kept).
 */
export function withContainer<S extends object>(ctx: S, container: ContainerDouble): S {
  Object.defineProperty(ctx, "container", { value: container, configurable: true, enumerable: true });
  return ctx;
}
