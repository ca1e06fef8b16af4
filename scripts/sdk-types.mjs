// @ts-check
// Writes the SDK's published type declarations, sdk/js/types/, from its JSDoc: TypeScript's
// declaration emit, then every member or type marked `@internal` removed (TypeScript's own
// `stripInternal` does not apply to JavaScript sources) and an internal constructor made
// private, and the declarations of the classic global script.
//
// Usage: node scripts/sdk-types.mjs          writes sdk/js/types/
//        node scripts/sdk-types.mjs --check  fails if sdk/js/types/ is not what it would write
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import ts from "typescript";

const sdk = new URL("../sdk/js/", import.meta.url).pathname;
const target = join(sdk, "types");
const check = process.argv.includes("--check");

/** The classic script's globals (bluecam.global.js defines them; its module has no exports). */
const GLOBAL = `/**
 * What the classic script \`bluecam.global.js\` defines on \`window\`: the classic calls at once,
 * and \`BlueCam\`, which gets every export of the module once it has loaded (\`BlueCam.ready\`).
 */
type BlueCamModule = typeof import("./bluecam.js");
declare global {
    var BlueCam: Partial<BlueCamModule> & { ready: Promise<BlueCamModule> };
    /** Joins (the module's \`joinRoom\`); resolves with the room. */
    function JoinRoom(options: import("./bluecam.js").JoinOptions): Promise<import("./bluecam.js").Room>;
    /** The classic name of \`JoinRoom\`. */
    function JoinCall(options: import("./bluecam.js").JoinOptions): Promise<import("./bluecam.js").Room>;
    /**
     * The classic fire-and-forget send to everyone in the room joined last: never rejects;
     * resolves true once every peer has the message, false otherwise (the failure goes to the
     * room's \`onError\`).
     */
    function sendMessage(type: string, data: unknown, opts?: { to?: string | string[] }): Promise<boolean>;
}
export {};
`;

/** @param {ts.Node} node */
const internal = (node) => ts.getJSDocTags(node).some((t) => t.tagName.text === "internal");

/**
 * The declarations of one file without what is internal.
 * @param {string} name
 * @param {string} text
 */
function strip(name, text) {
  const source = ts.createSourceFile(name, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  /** @type {ts.TransformerFactory<ts.SourceFile>} */
  const transformer = (context) => {
    /** @type {ts.Visitor} */
    const visit = (node) => {
      if (ts.isClassDeclaration(node)) {
        const members = node.members.flatMap((m) => {
          if (!internal(m)) return [m];
          // (Kept, but private: apps do not construct it.)
          if (ts.isConstructorDeclaration(m)) {
            return [ts.factory.createConstructorDeclaration([ts.factory.createModifier(ts.SyntaxKind.PrivateKeyword)], [], undefined)];
          }
          return [];
        });
        return ts.factory.updateClassDeclaration(node, node.modifiers, node.name, node.typeParameters, node.heritageClauses, members);
      }
      if ((ts.isTypeAliasDeclaration(node) || ts.isInterfaceDeclaration(node)) && internal(node)) return undefined;
      return ts.visitEachChild(node, visit, context);
    };
    return (file) => /** @type {ts.SourceFile} */ (ts.visitNode(file, visit));
  };
  const [out] = ts.transform(source, [transformer]).transformed;
  return ts.createPrinter({ newLine: ts.NewLineKind.LineFeed }).printFile(out);
}

const tmp = mkdtempSync(join(tmpdir(), "bluecam-types-"));
try {
  const tsc = new URL("../node_modules/typescript/bin/tsc", import.meta.url).pathname;
  execFileSync(process.execPath, [tsc, "-p", join(sdk, "tsconfig.json"), "--declaration", "--emitDeclarationOnly", "--noEmit", "false", "--outDir", tmp], { stdio: "inherit" });
  /** @type {Map<string, string>} */
  const files = new Map();
  for (const name of readdirSync(tmp).sort()) files.set(name, strip(name, readFileSync(join(tmp, name), "utf8")));
  files.set("bluecam.global.d.ts", GLOBAL);
  if (check) {
    const have = existsSync(target) ? readdirSync(target).sort() : [];
    const stale = [...new Set([...have, ...files.keys()])].filter((name) =>
      !files.has(name) || !have.includes(name) || readFileSync(join(target, name), "utf8") !== files.get(name));
    if (stale.length > 0) {
      console.error(`sdk/js/types is stale (${stale.join(", ")}): run node scripts/sdk-types.mjs`);
      process.exit(1);
    }
  } else {
    rmSync(target, { recursive: true, force: true });
    mkdirSync(target);
    for (const [name, text] of files) writeFileSync(join(target, name), text);
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
