import React, { useEffect, useState } from "react";
import { useRoom } from "./useRoom.js";

// The BlueCam server and the token come from the page's address here; a real app gets the
// token from its own backend (which holds the API secret) and knows its server.
const params = new URLSearchParams(location.search);
const SERVER = params.get("server") ?? "http://127.0.0.1:8080";
const TOKEN = params.get("token");

export function App() {
  const [inRoom, setInRoom] = useState(true);
  return (
    <main>
      <h1>BlueCam with React</h1>
      <button id="toggle" onClick={() => setInRoom((v) => !v)}>{inRoom ? "Leave" : "Join"}</button>
      {inRoom && <Room />}
    </main>
  );
}

function Room() {
  const { room, peers, messages, state, error } = useRoom({ server: SERVER, token: TOKEN });
  const [text, setText] = useState("");
  const [seen, setSeen] = useState(/** @type {string[]} */ ([]));
  // What this page saw of the others coming and going, in order.
  useEffect(() => {
    if (!room) return undefined;
    const offJoin = room.on("peerJoined", (p) => setSeen((s) => [...s, `joined ${p.identity}`]));
    const offLeave = room.on("peerLeft", (p) => setSeen((s) => [...s, `left ${p.identity}`]));
    return () => {
      offJoin();
      offLeave();
    };
  }, [room]);
  if (error) return <p id="error">{error.name}: {error.message}</p>;
  if (!room) return <p id="state">joining…</p>;
  const send = (event) => {
    event.preventDefault();
    room.sendMessage("chat", text).catch(() => {});
    setText("");
  };
  return (
    <section>
      <p id="state">{state} as {room.self.identity}</p>
      <ul id="peers">{peers.map((p) => <li key={p.id}>{p.identity}</li>)}</ul>
      <ul id="seen">{seen.map((s, i) => <li key={i}>{s}</li>)}</ul>
      <ul id="messages">{messages.map((m, i) => <li key={i}>{m.from}: {String(m.data)}</li>)}</ul>
      <form onSubmit={send}>
        <input id="text" value={text} onChange={(e) => setText(e.target.value)} />
        <button id="send">Send</button>
      </form>
    </section>
  );
}
