// Starts the real fencelock binary on an ephemeral 127.0.0.1 port with a temp data dir.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

export async function startServer(extraArgs = []) {
  const bin = process.env.FENCELOCK_BIN;
  if (!bin) throw new Error("FENCELOCK_BIN must point at a built fencelock binary (compat-tests/run.sh sets it)");
  const dir = mkdtempSync(join(tmpdir(), "fencelock-node-"));
  const proc = spawn(bin, ["--port", "0", "--bind", "127.0.0.1", "--data-dir", join(dir, "data"), ...extraArgs], {
    stdio: ["ignore", "pipe", "ignore"],
  });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("fencelock did not start in 30 s")), 30_000);
    createInterface({ input: proc.stdout }).on("line", (line) => {
      const match = /ready on 127\.0\.0\.1:(\d+)/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    proc.on("exit", (code) => reject(new Error(`fencelock exited with ${code}`)));
  });
  return {
    port,
    stop() {
      proc.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
