// @ts-check
// The BlueCam SDK for classic pages: a plain (non-module) script.
//
//   <script src="https://rooms.example.com/sdk/bluecam.global.js"></script>
//   <script>
//     JoinRoom({ token, localVideo: "localVideo", remoteVideo: "remoteVideo", onMessage });
//   </script>
//   <button onclick="sendMessage('shareLink', location.href)">Share</button>
//
// It defines, at once, the classic globals `JoinRoom`, `JoinCall` and `sendMessage`, and
// `window.BlueCam`, which gets every export of the ES module once it has loaded
// (`BlueCam.ready` resolves then). There is no second implementation: this script loads the
// module `bluecam.js` from next to itself with a dynamic `import()`, which classic scripts may
// use, and every global calls into it.
(function () {
  "use strict";
  /** @type {any} the page's globals */
  var w = window;
  var script = /** @type {HTMLScriptElement | null} */ (document.currentScript);
  var base = script && script.src ? new URL(".", script.src).href : new URL("/sdk/", location.href).href;
  /** @type {Record<string, any>} */
  var BlueCam = w.BlueCam || {};
  w.BlueCam = BlueCam;
  BlueCam.ready = import(base + "bluecam.js").then(/** @param {Record<string, unknown>} sdk */ function (sdk) {
    for (var name in sdk) if (name !== "default") BlueCam[name] = sdk[name];
    return sdk;
  });
  // A page that never calls the SDK should not hear about a failed load; one that does gets
  // the error from the call.
  BlueCam.ready.catch(/** @param {unknown} err */ function (err) {
    console.warn("BlueCam: the SDK could not be loaded from " + base + "bluecam.js", err);
  });

  /**
   * JoinRoom(options): joins (see the SDK's joinRoom); resolves with the room.
   * @param {import("./bluecam.js").JoinOptions} options
   */
  function JoinRoom(options) {
    return BlueCam.ready.then(/** @param {typeof import("./bluecam.js")} sdk */ function (sdk) {
      return sdk.joinRoom(options);
    });
  }
  w.JoinRoom = JoinRoom;
  w.JoinCall = JoinRoom;

  /**
   * sendMessage(type, data): the classic fire-and-forget send to everyone in the room joined
   * last. It never rejects (inline handlers do not await it): it resolves true once every peer
   * has the message, false otherwise, and a failure goes to the room's `onError`.
   */
  /**
   * @param {string} type
   * @param {unknown} data
   * @param {{to?: string | string[]}} [opts]
   * @returns {Promise<boolean>}
   */
  w.sendMessage = function (type, data, opts) {
    return BlueCam.ready.then(
      /** @param {typeof import("./bluecam.js")} sdk */
      function (sdk) {
        return sdk.sendMessage(type, data, opts);
      },
      function () {
        return false;
      },
    );
  };
})();
