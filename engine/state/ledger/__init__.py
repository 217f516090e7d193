"""The campaign ledger: what happened to every recipient of a campaign, durable across crashes.

The ledger lives in the embedded store (the same SQLite file, WAL mode, as the send history the
frequency caps count), so a request's hand-over is recorded in *one* transaction with its cap
counts: after a crash the two never disagree.

Layout (columnar, see docs/ledger.md): a recipient is identified by its segment row number (the
segment is read deterministically; message ids are ``<campaign>-<row>``). Each write is one
*event* row holding packed arrays — the rows it is about, a state code per row (or one for all),
reason labels, provider ids — so a 1000-message request costs one ``INSERT`` of a few blobs, not
1000 rows. Per-recipient state is derived by replaying a campaign's events in order (the last
event naming a row wins), then applying delivery reports.

Events:

* ``drop`` — rows a batch's stages refused (rejected / suppressed / deferred, with reasons);
  buffered and written with the next transaction (lost ones are re-derived on resume: the
  segment and its stages are deterministic).
* ``submitting`` — a request's rows, committed *before* the request goes to the gateway (with the
  cap counts). A row left ``submitting`` by a crash is never resent under at-most-once.
* ``outcome`` — a gateway's answer: ``submitted`` (with provider ids), ``failed`` or ``unknown``
  with reasons; committed when the answer arrives. Also ``pending`` (reason ``waiting:…`` or
  ``retry:…``) for a request that never left or must go again: a row is ``submitting`` only while
  its request may be on the wire, and its cap count is taken back in the same transaction.

One process owns a running campaign at a time: a *lease* row (owner, pid, host, start, heartbeat)
taken in the transaction that opens the run, renewed every few seconds, checked in every
hand-over's transaction (a writer whose lease was taken over can never hand a request over) and
given back at the end. A second run of the campaign is refused while the lease is held (a
:class:`CampaignBusy` that says by whom); a lease whose owner died — its pid is gone on this host,
or its heartbeat is older than the lease's time to live — is taken over.

Delivery semantics per campaign: ``at-most-once`` (marketing default: a row in ``submitting`` at
a crash is reconciled from delivery reports when they arrived, else recorded ``unknown`` and not
resent) or ``at-least-once`` (transactional default: such rows are sent again on resume, with
the same message id as idempotency key, and not counted against caps twice).

The package's modules: :mod:`~engine.state.ledger.records` (states, records, errors),
:mod:`~engine.state.ledger.lease` (one owner per campaign), :mod:`~engine.state.ledger.store`
(:class:`Ledger`: every campaign in one file), :mod:`~engine.state.ledger.run`
(:class:`CampaignLedger`: one run's writer), :mod:`~engine.state.ledger.encoding` (schema and
compact encodings), :mod:`~engine.state.ledger.tx` (transactions on a busy database).
"""
