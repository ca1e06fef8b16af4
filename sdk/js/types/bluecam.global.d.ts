/**
 * What the classic script `bluecam.global.js` defines on `window`: the classic calls at once,
 * and `BlueCam`, which gets every export of the module once it has loaded (`BlueCam.ready`).
 */
type BlueCamModule = typeof import("./bluecam.js");
declare global {
    var BlueCam: Partial<BlueCamModule> & { ready: Promise<BlueCamModule> };
    /** Joins (the module's `joinRoom`); resolves with the room. */
    function JoinRoom(options: import("./bluecam.js").JoinOptions): Promise<import("./bluecam.js").Room>;
    /** The classic name of `JoinRoom`. */
    function JoinCall(options: import("./bluecam.js").JoinOptions): Promise<import("./bluecam.js").Room>;
    /**
     * The classic fire-and-forget send to everyone in the room joined last: never rejects;
     * resolves true once every peer has the message, false otherwise (the failure goes to the
     * room's `onError`).
     */
    function sendMessage(type: string, data: unknown, opts?: { to?: string | string[] }): Promise<boolean>;
}
export {};
