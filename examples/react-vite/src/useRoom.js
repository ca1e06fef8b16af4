import { useEffect, useState } from "react";
import { joinRoom } from "bluecam";

/**
 * Joins a BlueCam room while the component is mounted: joins on mount, cancels the join (or
 * leaves the room) on unmount, and keeps the peers, the messages and the connection state as
 * React state. StrictMode safe: its first mount's join is aborted before it reaches the server.
 * @param {{server: string, token: string | null, video?: boolean, audio?: boolean}} options
 */
export function useRoom({ server, token, video = false, audio = false }) {
  const [room, setRoom] = useState(/** @type {import("bluecam").Room | null} */ (null));
  const [peers, setPeers] = useState(/** @type {import("bluecam").Peer[]} */ ([]));
  const [messages, setMessages] = useState(/** @type {{type: string, data: unknown, from: string}[]} */ ([]));
  const [state, setState] = useState("connecting");
  const [error, setError] = useState(/** @type {Error | null} */ (null));

  useEffect(() => {
    if (!token) return undefined;
    const controller = new AbortController();
    /** @type {import("bluecam").Room | null} */
    let joined = null;
    joinRoom({ server, token, video, audio, signal: controller.signal }).then(
      (r) => {
        joined = r;
        setRoom(r);
        setPeers(r.peers);
        setState(r.connectionState);
        r.on("peerJoined", () => setPeers(r.peers));
        r.on("peerLeft", () => setPeers(r.peers));
        r.on("message", (type, data, from) => setMessages((m) => [...m, { type, data, from: from.identity }]));
        r.on("connectionChange", setState);
        r.on("error", setError);
      },
      (e) => {
        if (e.name !== "AbortError") setError(e);
      },
    );
    return () => {
      controller.abort();
      joined?.leave();
      setRoom(null);
      setPeers([]);
    };
  }, [server, token, video, audio]);

  return { room, peers, messages, state, error };
}
