"""A session core for binary SMS protocols (SMPP, CMPP; SGIP and SMGP fit too): sans-IO and anyio.

* :mod:`~plugins.session_core.framing` — length-prefixed PDUs out of a byte stream;
* :mod:`~plugins.session_core.window` — sequence numbers and the bounded in-flight window;
* :mod:`~plugins.session_core.session` — the connection state machine (bind, keepalive with N
  tries, response timeouts, unbind), driven by bytes and times, with a :class:`Dialect` per protocol;
* :mod:`~plugins.session_core.link` — the anyio shell of one bind (connect, bind, pipeline,
  reconnect with backoff), read by whichever task waits, so no background task is needed;
* :mod:`~plugins.session_core.longsms` — splitting by the engine's billed-part rules, GSM-7 /
  UCS-2 encoding, UDH concatenation, MO reassembly;
* :mod:`~plugins.session_core.receipts` — provider ids in canonical form, receipt text, and the
  per-part folding of receipts into one report per message;
* :mod:`~plugins.session_core.pool` — what a gateway on several binds shares: sending a batch
  over the binds' windows, per-message results, receipts and MO handed to the engine.
"""
