import React, { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App.jsx";

// StrictMode mounts every component twice in development: useRoom's first join is cancelled
// before it reaches the server, so the others see one join.
createRoot(document.getElementById("root")).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
