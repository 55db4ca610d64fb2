/**
 * Node side of the Exec sandbox test double: real commands in real
 * bubblewrap sandboxes, one root per sandbox instance, so the sandbox
 * contract examples run against real bash, coreutils timeout and files that
 * persist per id. The FakeExec Durable Object (test/doubles.ts) calls this
 * through Miniflare's outbound service at http://exec-helper.test.
 *
 * Mirrors what the Sandbox SDK does inside an Exec container: `exec` runs a
 * shell command with extra env and returns exit code, stdout and stderr;
 * `writeFile` writes a file; `destroy` removes everything.
 */
import { spawn } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, normalize } from "node:path";

export const EXEC_HELPER_HOST = "exec-helper.test";

const root = mkdtempSync(join(tmpdir(), "flare-exec-double-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

function boxDir(key: string): string {
  if (!/^[a-z0-9-]{1,100}$/.test(key)) throw new Error(`bad sandbox key ${key}`);
  const dir = join(root, key);
  mkdirSync(join(dir, "workspace"), { recursive: true });
  mkdirSync(join(dir, "tmp"), { recursive: true });
  return dir;
}

/** Map a sandbox path under /workspace or /tmp to the host. */
function hostPath(key: string, path: string): string {
  const p = normalize(path);
  for (const top of ["/workspace", "/tmp"]) {
    if (p === top || p.startsWith(`${top}/`)) return join(boxDir(key), p.slice(1));
  }
  throw new Error(`the test double only writes under /workspace and /tmp, not ${path}`);
}

interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

function runInBox(key: string, command: string, env: Record<string, string>, timeoutMs: number): Promise<ExecResult> {
  const dir = boxDir(key);
  const args = [
    "--ro-bind", "/usr", "/usr",
    "--ro-bind", "/etc", "/etc",
    "--symlink", "usr/bin", "/bin",
    "--symlink", "usr/sbin", "/sbin",
    "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64",
    "--bind", join(dir, "workspace"), "/workspace",
    "--bind", join(dir, "tmp"), "/tmp",
    "--proc", "/proc",
    "--dev", "/dev",
    "--unshare-pid",
    "--die-with-parent",
    "--chdir", "/",
    "bash", "-c", command,
  ];
  return new Promise((resolve, reject) => {
    const child = spawn("bwrap", args, {
      env: { PATH: "/usr/local/bin:/usr/bin:/bin", HOME: "/workspace", LANG: "C.UTF-8", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    const killer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (e) => {
      clearTimeout(killer);
      reject(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(killer);
      resolve({
        exitCode: code ?? 128 + (signal ? 9 : 0),
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      });
    });
  });
}

/** Outbound handler: answers the FakeExec Durable Object's calls. */
export async function execHelper(request: Request): Promise<Response> {
  const url = new URL(request.url);
  const body = (await request.json()) as Record<string, unknown>;
  const key = String(body.key);
  try {
    switch (url.pathname) {
      case "/exec": {
        const r = await runInBox(
          key,
          String(body.command),
          (body.env as Record<string, string>) ?? {},
          Number(body.timeoutMs ?? 120_000),
        );
        return Response.json(r);
      }
      case "/write": {
        const p = hostPath(key, String(body.path));
        mkdirSync(dirname(p), { recursive: true });
        writeFileSync(p, String(body.content));
        return Response.json({ ok: true });
      }
      case "/destroy":
        rmSync(join(root, key), { recursive: true, force: true });
        return Response.json({ ok: true });
      default:
        return Response.json({ error: `no route ${url.pathname}` }, { status: 404 });
    }
  } catch (e) {
    return Response.json({ error: String(e) }, { status: 500 });
  }
}
