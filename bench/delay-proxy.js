// @ts-check
/**
 * A delaying TCP proxy: stands for a server far away (`tc netem` is not available here).
 * Every chunk read on either side is written to the other side `delayMs` later, in order;
 * the end of a stream is delayed the same way. Both sockets have Nagle off, so chunks are
 * neither merged nor held back on top of the delay.
 *
 *   const proxy = await startDelayProxy({ port: 8080 }, 50); // 50 ms each way
 *   ... connect to proxy.port ...
 *   await proxy.close();
 */
import { createServer, connect } from "node:net";
import { performance } from "node:perf_hooks";

/**
 * Copies `from` to `to`, each chunk `delayMs` after it arrived.
 * @param {import("node:net").Socket} from
 * @param {import("node:net").Socket} to
 * @param {number} delayMs
 */
function pipeDelayed(from, to, delayMs) {
  /** @type {{due: number, chunk: Buffer | null}[]} */
  const queue = [];
  /** @type {NodeJS.Timeout | null} */
  let timer = null;
  const pump = () => {
    timer = null;
    const now = performance.now();
    while (queue.length > 0 && queue[0].due <= now) {
      const { chunk } = /** @type {{due: number, chunk: Buffer | null}} */ (queue.shift());
      if (to.destroyed) return;
      if (chunk === null) to.end();
      else to.write(chunk);
    }
    if (queue.length > 0) timer = setTimeout(pump, Math.max(0, queue[0].due - performance.now()));
  };
  /** @param {Buffer | null} chunk */
  const push = (chunk) => {
    queue.push({ due: performance.now() + delayMs, chunk });
    if (timer === null) timer = setTimeout(pump, delayMs);
  };
  from.on("data", (chunk) => push(chunk));
  from.on("end", () => push(null));
}

/**
 * @param {{host?: string, port: number}} upstream
 * @param {number} delayMs added in each direction
 * @returns {Promise<{port: number, url: string, connections: () => number, close: () => Promise<void>}>}
 */
export function startDelayProxy(upstream, delayMs) {
  /** @type {Set<import("node:net").Socket>} */
  const sockets = new Set();
  let total = 0;
  const server = createServer({ allowHalfOpen: true }, (client) => {
    total++;
    const up = connect({ host: upstream.host ?? "127.0.0.1", port: upstream.port, allowHalfOpen: true });
    for (const s of [client, up]) {
      s.setNoDelay(true);
      sockets.add(s);
      s.on("close", () => {
        sockets.delete(s);
        // A reset on one side resets the other (after the delay, like everything else).
        setTimeout(() => (s === client ? up : client).destroy(), delayMs);
      });
      s.on("error", () => s.destroy());
    }
    pipeDelayed(client, up, delayMs);
    pipeDelayed(up, client, delayMs);
  });
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const addr = server.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      resolve({
        port,
        url: `http://127.0.0.1:${port}`,
        connections: () => total,
        close: () =>
          new Promise((done) => {
            for (const s of sockets) s.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}
