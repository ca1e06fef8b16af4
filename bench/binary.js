// What binary data costs the SDK: a message's data encoded (binary as base64 inside the JSON,
// docs/protocol.md §15) and decoded again, against a string of the same length. In Node's V8,
// or with --browser in headless Chromium (/usr/bin/chromium), whose V8 has a native base64.
// Usage: node bench/binary.js [--browser]
import { createServer } from "node:http";
import { readFileSync } from "node:fs";

/** The measurement, run here or in the page (it imports the SDK from `base`). @param {string} base */
async function measure(base) {
  const { encodeData, reviveBytes } = await import(`${base}delivery.js`);
  /** @param {() => unknown} f */
  const median = (f) => {
    const times = [];
    const end = performance.now() + 300;
    do {
      const t = performance.now();
      f();
      times.push(performance.now() - t);
    } while (performance.now() < end || times.length < 5);
    times.sort((a, b) => a - b);
    return times[Math.floor(times.length / 2)];
  };
  const rows = ["size      | data       | on the wire | encode ms | decode ms"];
  for (const size of [1024, 64 * 1024, 700 * 1024]) {
    const bytes = new Uint8Array(size).map((_, i) => (i * 7919) % 251);
    const text = "x".repeat(size);
    for (const [what, data] of [["Uint8Array", bytes], ["string", text]]) {
      const { json } = encodeData(data);
      const encode = median(() => encodeData(data));
      const decode = median(() => reviveBytes(JSON.parse(json)));
      rows.push(`${String(size).padStart(9)} | ${String(what).padEnd(10)} | ${String(json.length).padStart(11)} | ${encode.toFixed(3).padStart(9)} | ${decode.toFixed(3).padStart(9)}`);
    }
  }
  return rows.join("\n");
}

if (!process.argv.includes("--browser")) {
  console.log("Node", process.version);
  console.log(await measure(new URL("../sdk/js/", import.meta.url).href));
} else {
  const { chromium } = await import("playwright-core");
  const sdk = new URL("../sdk/js/", import.meta.url);
  const http = createServer((req, res) => {
    const name = (req.url ?? "/").slice(1).replace(/[^a-z.-]/g, "");
    let body;
    try {
      body = name ? readFileSync(new URL(name, sdk)) : "";
    } catch {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": name.endsWith(".js") ? "text/javascript" : "text/html" }).end(body);
  });
  await new Promise((resolve) => http.listen(0, "127.0.0.1", () => resolve(undefined)));
  const addr = /** @type {import("node:net").AddressInfo} */ (http.address());
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--headless", "--no-sandbox", "--disable-background-networking"] });
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${addr.port}/`);
    console.log("Chromium", browser.version());
    console.log(await page.evaluate(`(${measure})("http://127.0.0.1:${addr.port}/")`));
  } finally {
    await browser.close();
    http.close();
  }
}
