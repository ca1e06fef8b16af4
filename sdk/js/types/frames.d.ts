/**
 * A server frame from what the transport delivered (a WebSocket's text, or an object the HTTP
 * transport already parsed); null when it is not one this SDK can read (not JSON, an unknown
 * op, a field missing or of the wrong type).
 * @param {unknown} raw
 * @returns {ServerFrame | null}
 */
export function parseServerFrame(raw: unknown): ServerFrame | null;
/**
 * (`server: true` only on the `from` of a message the app's backend sent)
 */
export type Peer = {
    id: string;
    identity: string;
    name?: string;
    metadata?: unknown;
    server?: true;
};
export type RoomInfo = {
    id: string;
    name?: string;
    description?: string;
    metadata?: unknown;
    maxPeers: number;
};
export type SessionInfo = {
    id: string;
    secret: string;
    resumeWindowSecs?: number;
};
export type Limits = {
    maxFrameBytes?: number;
    rateFramesPerSec?: number;
    rateBurstFrames?: number;
    rateBytesPerSec?: number;
    rateBurstBytes?: number;
    outboundQueueBytes?: number;
    maxPeers?: number;
    resumeWindowSecs?: number;
    pingIntervalSecs?: number;
};
/**
 * What the server sends.
 */
export type JoinedFrame = {
    op: "joined";
    self: Peer;
    room: RoomInfo;
    peers: Peer[];
    session: SessionInfo;
    iceServers?: RTCIceServer[];
    limits?: Limits;
    resumed?: boolean;
};
/**
 * What the server sends.
 */
export type PeerJoinedFrame = {
    op: "peer_joined";
    peer: Peer;
};
/**
 * What the server sends.
 */
export type PeerLeftFrame = {
    op: "peer_left";
    peer: Peer;
    reason: string;
};
/**
 * What the server sends.
 */
export type SignalInFrame = {
    op: "signal";
    from: string;
    data: unknown;
};
/**
 * What the server sends.
 */
export type MessageFrame = {
    op: "message";
    from: string;
    msg: unknown;
};
/**
 * What the server sends.
 */
export type ServerMessageFrame = {
    op: "server_message";
    e: number;
    s: number;
    type: string;
    data: unknown;
};
/**
 * What the server sends.
 */
export type RoomClosedFrame = {
    op: "room_closed";
    reason: string;
};
/**
 * What the server sends.
 */
export type ErrorFrame = {
    op: "error";
    code: string;
    message: string;
    ref?: number;
    peers?: string[];
    retryAfterMs?: number;
    close?: number;
};
/**
 * What the server sends.
 */
export type PingFrame = {
    op: "ping";
} | {
    op: "pong";
};
/**
 * What the server sends.
 */
export type ServerFrame = JoinedFrame | PeerJoinedFrame | PeerLeftFrame | SignalInFrame | MessageFrame | ServerMessageFrame | RoomClosedFrame | ErrorFrame | PingFrame;
/**
 * What the SDK sends.
 */
export type JoinFrame = {
    op: "join";
    token: string;
    resume?: {
        session: string;
        secret: string;
    };
};
/**
 * What the SDK sends.
 */
export type SignalOutFrame = {
    op: "signal";
    to: string;
    data: any;
};
/**
 * What the SDK sends.
 */
export type SendFrame = {
    op: "send";
    to?: string[];
    msg: unknown;
};
/**
 * What the SDK sends.
 */
export type LeaveFrame = {
    op: "leave";
};
/**
 * What the SDK sends.
 */
export type ServerAckFrame = {
    op: "server_ack";
    e: number;
    s: number;
};
/**
 * What the SDK sends.
 */
export type ClientFrame = JoinFrame | SignalOutFrame | SendFrame | ServerAckFrame | LeaveFrame | PingFrame;
