"""The command relay: queue, lease, complete, expire, time out, cancel.

A command targets a device, a group or every device; it becomes one *delivery* per device,
each with its own state, so an operator sees which device did what::

    pending ──poll──▶ delivered ──complete──▶ completed | failed
       │  ▲               │
       │  └─lease lapses──┘ (until COMMAND_MAX_ATTEMPTS, then failed: timeout)
       └──▶ expired (expiry passed before hand-out) | cancelled (by an operator)

Durability, and why it is cheap:

- A new command is one write of ``commands.json`` (TinyDB), durable before the 201.
- The end of each delivery is one fdatasynced record in the ``commands`` history. That
  record is the truth; commands whose deliveries have all ended are tidied out of
  ``commands.json`` in one write by the sweeper, so the file holds only open work and its
  whole-file rewrite stays small. At start, the history after each open command's creation
  is replayed to learn which of its deliveries already ended.
- A lease lives in memory only. A poll that hands nothing out writes nothing, and a poll that
  does hand out writes nothing either. Each device's leases (attempts so far, lease end)
  ride along in its liveness entry, which is checkpointed every few seconds and at
  shutdown: after a restart a leased command stays leased, and its attempts keep
  counting towards ``COMMAND_MAX_ATTEMPTS``. After a crash a lease newer than the last
  checkpoint is handed out again: delivery is at least once, and devices dedup by command
  id (which never repeats).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..clock import iso_from_epoch
from ..errors import Conflict, NotFound, ValidationFailed
from ..fleet.devices import record_event
from ..jsonbounds import check_json_size
from ..store import Document, Stores
from ..store.periodic import Periodic

log = logging.getLogger(__name__)

PENDING, DELIVERED = "pending", "delivered"
COMPLETED, FAILED, EXPIRED, CANCELLED = "completed", "failed", "expired", "cancelled"
OPEN_STATES = (PENDING, DELIVERED)
FINAL_STATES = (COMPLETED, FAILED, EXPIRED, CANCELLED)
STATES = OPEN_STATES + FINAL_STATES
#: Command ids are reserved in blocks so they never repeat, even after a crash.
ID_BLOCK = 1000
ID_FACT = "next_command_id"
#: The liveness field holding a device's leases: {command id: [attempts, until, at]}.
LEASES_FIELD = "leases"


@dataclass(frozen=True)
class Target:
    """Who a command is for: ``device``, ``group`` or ``all``."""

    kind: str
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """``all``, ``group:<name>`` (or ``group-<name>``, as staging folders say), or a
        device id."""
        if text == "all":
            return cls("all")
        for prefix in ("group:", "group-"):
            if text.startswith(prefix):
                return cls("group", text[len(prefix):])
        return cls("device", text)

    def __str__(self) -> str:
        return {"all": "all", "group": f"group:{self.name}"}.get(self.kind, self.name or "")


@dataclass
class Delivery:
    """One device's copy of a command; only open deliveries live in memory."""

    command: Document
    device_id: str
    state: str = PENDING
    attempts: int = 0
    leased_until: float = 0.0
    delivered_at: float | None = None
    #: The history record that ended it, once it has ended.
    final: Document | None = field(default=None, repr=False)

    @property
    def order(self) -> tuple[int, int]:
        """Highest priority first, then oldest first."""
        return (-self.command["priority"], self.command["id"])

    def expired(self, now: float) -> bool:
        expires_at = self.command.get("expires_at_epoch")
        return expires_at is not None and now >= expires_at


@dataclass
class Settings:
    lease_s: float = 60.0
    max_attempts: int = 3
    json_max_bytes: int = 4096
    sweep_s: float = 2.0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Settings:
        return cls(lease_s=config["COMMAND_LEASE_S"],
                   max_attempts=config["COMMAND_MAX_ATTEMPTS"],
                   json_max_bytes=config["COMMAND_JSON_MAX_BYTES"],
                   sweep_s=config["COMMAND_SWEEP_S"])


class CommandQueue:
    """Open deliveries in memory, per device, in hand-out order; one lock guards them.

    Ending a delivery appends to the history (an fdatasync) under a separate lock, so polls
    of other devices never wait on the disk.
    """

    #: Where "now" comes from: leases, expiry and sweeps all ask this (tests move it).
    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, stores: Stores, settings: Settings | None = None):
        self.stores = stores
        self.settings = settings or Settings()
        self.history = stores.history["commands"]
        self._lock = threading.Lock()
        self._end_lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._by_device: dict[str, list[Delivery]] = {}
        self._by_command: dict[int, dict[str, Delivery]] = {}
        self._next_id = 0
        self._ids_reserved_until = 0
        self._sweeper = Periodic("command-sweeper", self.settings.sweep_s, self.sweep)
        #: Called with each delivery that ended failed (the alert webhook), or None.
        self.on_failed: Callable[[Document], None] | None = None
        self._load()

    # -- start-up ------------------------------------------------------------------------
    def _load(self) -> None:
        open_commands = sorted(self.stores.commands.all(), key=lambda c: c["id"])
        try:
            self._ids_reserved_until = self.stores.meta.get(ID_FACT)["value"]
        except NotFound:
            self._ids_reserved_until = 1
        # A crash may have used ids up to the reservation: start after it.
        self._next_id = self._ids_reserved_until
        ended: set[tuple[int, str]] = set()
        if open_commands:
            since = min(c["created_seq"] for c in open_commands)
            for record in self.history.find(after_seq=since, newest_first=False):
                ended.add((record["command_id"], record["device_id"]))
        for command in open_commands:
            deliveries = self._by_command.setdefault(command["id"], {})
            for device_id in command["devices"]:
                if (command["id"], device_id) not in ended:
                    self._add(self._restore_lease(Delivery(command, device_id)),
                              keep_order=False)
            if not deliveries:
                log.debug("command %s ended before the last tidy-up", command["id"])
        # Once per device, not per delivery: a sort after each append made start-up grow
        # with the square of one device's backlog (3,000 open commands: 4.8 s).
        for queue in self._by_device.values():
            queue.sort(key=lambda d: d.order)

    def _restore_lease(self, delivery: Delivery) -> Delivery:
        """Put back the attempts and lease a checkpoint kept; a lease that lapsed while
        the hub was down is then handled as any lapsed lease (pending again, or failed
        ``timeout`` when out of attempts)."""
        leases = self.stores.liveness.get(delivery.device_id).get(LEASES_FIELD) or {}
        saved = leases.get(str(delivery.command["id"]))
        if saved:
            attempts, leased_until, delivered_at = saved
            delivery.state, delivery.attempts = DELIVERED, int(attempts)
            delivery.leased_until, delivery.delivered_at = leased_until, delivered_at
        return delivery

    def _note_leases(self, device_id: str) -> None:
        """Keep a device's leases in its liveness entry (memory; checkpointed with it)."""
        with self._lock:
            leases = {str(d.command["id"]): [d.attempts, d.leased_until, d.delivered_at]
                      for d in self._by_device.get(device_id, ()) if d.attempts}
        if leases or self.stores.liveness.get(device_id).get(LEASES_FIELD):
            self.stores.liveness.update(device_id, **{LEASES_FIELD: leases})

    def _add(self, delivery: Delivery, *, keep_order: bool = True) -> None:
        """File a delivery under its device and command; ``keep_order=False`` leaves the
        device's queue for the caller to sort once (loading a backlog)."""
        queue = self._by_device.setdefault(delivery.device_id, [])
        if keep_order:
            bisect.insort(queue, delivery, key=lambda d: d.order)
        else:
            queue.append(delivery)
        self._by_command.setdefault(delivery.command["id"], {})[delivery.device_id] = delivery

    def _take_id(self) -> int:
        """The next command id; a new block is reserved on disk before it is used."""
        if self._next_id >= self._ids_reserved_until:
            until = self._next_id + ID_BLOCK
            self.stores.meta.upsert({"name": ID_FACT, "value": until})
            self._ids_reserved_until = until
        self._next_id += 1
        return self._next_id - 1

    # -- operators -----------------------------------------------------------------------
    def send(self, target: str, body: dict[str, Any], actor: str | None) -> Document:
        """Queue a validated command request (``CommandCreateSchema``'s fields) for a
        target as operators write it: the admin API's and the dashboard's one way."""
        return self.create(Target.parse(target), body["name"], args=body["args"],
                           priority=body["priority"], expires_in_s=body.get("expires_in_s"),
                           expires_at=body.get("expires_at"), actor=actor)

    def send_to(self, device_ids: list[str], body: dict[str, Any],
                actor: str | None) -> Document:
        """``send`` to the devices an operator selected (one command, a delivery each)."""
        return self.create(Target("selection", f"{len(device_ids)} selected devices"),
                           body["name"], args=body["args"], priority=body["priority"],
                           expires_in_s=body.get("expires_in_s"),
                           expires_at=body.get("expires_at"), actor=actor,
                           devices=device_ids)

    def recently_ended(self, limit: int) -> list[Document]:
        """The latest ended deliveries, newest first (from the history)."""
        return self.history.find(limit=limit)

    def create(self, target: Target, name: str, *, args: dict | None = None,
               priority: int = 50, expires_in_s: float | None = None,
               expires_at: float | None = None, actor: str | None = None,
               devices: list[str] | None = None) -> Document:
        """Queue a command; it is on disk before this returns. ``devices`` (each must
        exist) instead of the target's: the devices an operator selected."""
        if devices is not None:
            devices = sorted({self.stores.devices.get(d)["id"] for d in devices})
        else:
            devices = self.resolve_target(target)
        args = args or {}
        check_json_size(args, self.settings.json_max_bytes, "args")
        now = self.clock()
        if expires_in_s is not None:
            expires_at = now + expires_in_s
        if expires_at is not None and expires_at <= now:
            raise ValidationFailed("the command would expire before it could be delivered",
                                   {"expires_at": ["must be in the future"]})
        with self._create_lock:  # not _lock: polls must not wait for this write
            command = {
                "id": self._take_id(), "name": name, "args": args, "priority": priority,
                "target": str(target), "devices": devices, "created_at": iso_from_epoch(now),
                "expires_at": iso_from_epoch(expires_at) if expires_at else None,
                "expires_at_epoch": expires_at, "created_by": actor,
                "created_seq": self.history.last_seq,
            }
            self.stores.commands.insert(command)
        with self._lock:
            for device_id in devices:
                self._add(Delivery(command, device_id))
        log.info("command %s %r queued for %s (%d devices)", command["id"], name, target,
                 len(devices))
        record_event(self.stores, "command.queued", devices[0] if len(devices) == 1 else None,
                     actor, command_id=command["id"], name=name, target=str(target))
        return self.describe(command["id"])

    def resolve_target(self, target: Target) -> list[str]:
        """The devices a target means now; a group or fleet command is a snapshot."""
        if target.kind == "device":
            return [self.stores.devices.get(target.name)["id"]]
        devices = sorted(self.stores.devices.all(), key=lambda d: d["id"])
        if target.kind == "group":
            devices = [d for d in devices if target.name in d.get("groups", [])]
            if not devices:
                raise NotFound(f"group {target.name!r} has no devices", code="empty_group")
        elif not devices:
            raise NotFound("there are no devices to send to", code="no_devices")
        return [d["id"] for d in devices]

    def cancel(self, command_id: int, *, device_id: str | None = None,
               actor: str | None = None) -> Document:
        """End every open delivery of a command (or one device's) as cancelled."""
        with self._lock:
            deliveries = list(self._by_command.get(command_id, {}).values())
        if device_id is not None:
            deliveries = [d for d in deliveries if d.device_id == device_id]
        if not deliveries:
            self.describe(command_id)  # 404 when the command never existed
            raise Conflict(f"command {command_id} has nothing left to cancel",
                           code="nothing_to_cancel")
        for delivery in deliveries:
            self._end(delivery, CANCELLED, reason="cancelled", ended_by=actor)
        return self.describe(command_id)

    # -- devices -------------------------------------------------------------------------
    def lease_pending_commands(self, device_id: str, limit: int = 5) -> list[Document]:
        """Hand out (and lease) a device's pending commands: highest priority, then oldest.

        Touches only memory. Deliveries found expired or out of attempts are ended on the
        way, and never handed out.
        """
        now = self.clock()
        handed: list[Document] = []
        to_end: list[tuple[Delivery, str, str]] = []
        with self._lock:
            queue = self._by_device.get(device_id)
            if not queue:
                return handed
            for delivery in queue:
                due = self._due_ending(delivery, now)
                if due:
                    to_end.append((delivery, *due))
                elif delivery.state == PENDING and len(handed) < limit:
                    delivery.state = DELIVERED
                    delivery.attempts += 1
                    delivery.delivered_at = now
                    delivery.leased_until = now + self.settings.lease_s
                    handed.append(self._handout(delivery))
        for delivery, state, reason in to_end:
            self._end_quietly(delivery, state, reason)
        if handed:
            self._note_leases(device_id)
        return handed

    def complete(self, device_id: str, command_id: int, *, success: bool = True,
                 result: Any = None, error: str | None = None) -> tuple[Document, bool]:
        """Record a device's outcome; returns (record, duplicate).

        Idempotent: the same device completing again gets its first record back with
        ``duplicate`` true. A delivery the hub already ended (expired, cancelled, timed out)
        answers 409 and stays as it was.
        """
        check_json_size(result, self.settings.json_max_bytes, "result")
        with self._lock:
            delivery = self._by_command.get(command_id, {}).get(device_id)
        if delivery is None:
            return self._earlier_outcome(device_id, command_id), True
        if delivery.state == PENDING and delivery.expired(self.clock()):
            self._end_quietly(delivery, EXPIRED, "expired")
        record = self._end(delivery, COMPLETED if success else FAILED,
                           reason=None if success else (error or "failed"),
                           result=result, ended_by="device")
        if record is None:  # the hub ended it first
            return self._earlier_outcome(device_id, command_id, delivery.final), True
        return record, False

    def _earlier_outcome(self, device_id: str, command_id: int,
                         record: Document | None = None) -> Document:
        if record is None:
            found = self.history.find(f"command:{command_id}", limit=1,
                                      where=lambda r: r["device_id"] == device_id)
            if not found:
                raise NotFound(f"device {device_id} has no command {command_id}",
                               code="command_not_found")
            record = found[0]
        if record.get("ended_by") != "device":
            raise Conflict(f"command {command_id} was already {record['state']} "
                           f"({record.get('reason')}); the result was not recorded",
                           {"state": record["state"], "reason": record.get("reason")},
                           code=f"command_{record['state']}")
        return record

    def open_counts(self, device_id: str) -> dict[str, int]:
        """A device's open deliveries: pending (not yet handed out) and leased (handed
        out, not completed)."""
        with self._lock:
            queue = self._by_device.get(device_id, ())
            pending = sum(1 for d in queue if d.state == PENDING)
            return {"pending": pending, "leased": len(queue) - pending}

    # -- views ---------------------------------------------------------------------------
    def describe(self, command_id: int) -> Document:
        """A command with the state of each of its deliveries (open ones from memory,
        ended ones from the history)."""
        with self._lock:
            open_ = {d.device_id: self._delivery_view(d)
                     for d in self._by_command.get(command_id, {}).values()}
            command = next(iter(self._by_command.get(command_id, {}).values()), None)
        # read after memory: an end is in the history before it leaves memory, so a
        # delivery that ended meanwhile is in one or the other, never in neither
        ended = {r["device_id"]: r for r in self.history.find(f"command:{command_id}")}
        if command is not None:
            command = command.command
        elif ended:
            command = next(iter(ended.values()))
        else:  # the sweeper may tidy it away between a look and a read
            try:
                command = self.stores.commands.get(command_id)
            except NotFound:
                raise NotFound(f"command {command_id} not found",
                               code="command_not_found") from None
        deliveries = [open_.get(d) or self._ended_view(ended[d])
                      for d in sorted(set(open_) | set(ended))]
        counts = {state: 0 for state in STATES}
        for delivery in deliveries:
            counts[delivery["state"]] += 1
        return {**self._command_view(command, command_id), "counts": counts,
                "deliveries": deliveries}

    def list_open(self) -> list[Document]:
        """Commands with deliveries still open, newest first."""
        with self._lock:
            ids = sorted((c for c, ds in self._by_command.items() if ds), reverse=True)
        return [self.describe(command_id) for command_id in ids]

    def device_commands(self, device_id: str, *, states: Iterable[str] = (),
                        before_seq: int | None = None, limit: int = 50) -> dict:
        """A device's deliveries: open ones first (in hand-out order), then ended ones
        newest first, paged by history sequence number."""
        states = set(states)
        items: list[Document] = []
        if before_seq is None:
            with self._lock:
                items = [self._delivery_view(d) for d in self._by_device.get(device_id, ())
                         if not states or d.state in states]
        room = max(limit - len(items), 0)
        ended = self.history.find(
            f"device:{device_id}", before_seq=before_seq, limit=room + 1,
            where=(lambda r: r["state"] in states) if states else None) if room else []
        more = len(ended) > room
        ended = ended[:room]
        items += [self._ended_view(r) for r in ended]
        return {"device_id": device_id, "commands": items,
                "next_before": ended[-1]["seq"] if more and ended else None}

    def stats(self) -> dict:
        with self._lock:
            open_deliveries = [d for ds in self._by_device.values() for d in ds]
            commands = sum(1 for ds in self._by_command.values() if ds)
        return {
            "open_commands": commands,
            "pending": sum(1 for d in open_deliveries if d.state == PENDING),
            "delivered": sum(1 for d in open_deliveries if d.state == DELIVERED),
            "ended_in_history": len(self.history),
        }

    # -- the sweeper ---------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> int:
        """End what is due (expired, timed out, device deleted), then tidy
        ``commands.json``. Returns how many deliveries ended."""
        now = self.clock() if now is None else now
        with self._lock:
            due = []
            for queue in self._by_device.values():
                for delivery in queue:
                    ending = self._due_ending(delivery, now)
                    if ending:
                        due.append((delivery, *ending))
            for device_id, queue in self._by_device.items():
                if device_id not in self.stores.devices:
                    due += [(d, CANCELLED, "device_deleted") for d in queue]
        for delivery, state, reason in due:
            self._end_quietly(delivery, state, reason)
        self.tidy()
        return len(due)

    def tidy(self) -> None:
        """Drop commands whose deliveries have all ended from ``commands.json``."""
        with self._lock:
            done = [c for c, ds in self._by_command.items() if not ds]
        if not done:
            return
        self.stores.commands.delete_many(done)
        with self._lock:
            for command_id in done:
                if not self._by_command.get(command_id):
                    self._by_command.pop(command_id, None)

    def start(self) -> None:
        self._sweeper.start()

    def stop(self) -> None:
        self._sweeper.stop()
        self._release_ids()

    def _release_ids(self) -> None:
        """At a clean stop the reserved block's unused ids are free again, so the next
        start carries on the numbers (command 12 after 11, not 1001). A crash still starts
        past the whole block: an id is never used twice."""
        with self._create_lock:
            if self._next_id < self._ids_reserved_until:
                self.stores.meta.upsert({"name": ID_FACT, "value": self._next_id})
                self._ids_reserved_until = self._next_id

    # -- internals -----------------------------------------------------------------------
    def _due_ending(self, delivery: Delivery, now: float) -> tuple[str, str] | None:
        """What the hub must end this delivery as now, if anything; a lapsed lease with
        attempts left just makes it pending again. Caller holds ``_lock``.

        A delivery about to end keeps its state until ``_end`` records the end: flipped to
        pending first, a reader between the two (outside the lock) saw a state it never
        really had."""
        lapsed = delivery.state == DELIVERED and delivery.leased_until <= now
        if lapsed and delivery.attempts >= self.settings.max_attempts:
            return FAILED, "timeout"
        if (lapsed or delivery.state == PENDING) and delivery.expired(now):
            return EXPIRED, "expired"
        if lapsed:
            delivery.state = PENDING
        return None

    def _end_quietly(self, delivery: Delivery, state: str, reason: str) -> None:
        try:
            self._end(delivery, state, reason=reason, ended_by="hub")
        except Exception:  # e.g. disk full: it stays open and is tried again next sweep
            log.exception("could not end command %s for %s as %s",
                          delivery.command["id"], delivery.device_id, state)

    def _end(self, delivery: Delivery, state: str, *, reason: str | None,
             ended_by: str | None, result: Any = None) -> Document | None:
        """Write the delivery's end to the history, then forget it. None if it had
        already ended."""
        with self._end_lock:
            if delivery.final is not None:
                return None
            now = self.clock()
            record = self.history.append({
                **self._command_view(delivery.command), "device_id": delivery.device_id,
                "command_id": delivery.command["id"], "state": state, "reason": reason,
                "result": result, "attempts": delivery.attempts,
                "delivered_at": iso_from_epoch(delivery.delivered_at)
                if delivery.delivered_at else None,
                "ended_at": iso_from_epoch(now), "ended_by": ended_by,
            })
            with self._lock:
                delivery.final = record
                delivery.state = state
                queue = self._by_device.get(delivery.device_id, [])
                if delivery in queue:
                    queue.remove(delivery)
                if not queue:
                    self._by_device.pop(delivery.device_id, None)
                self._by_command.get(delivery.command["id"], {}).pop(delivery.device_id, None)
        if delivery.attempts:
            self._note_leases(delivery.device_id)
        if state == FAILED and self.on_failed is not None:
            self.on_failed(record)  # never blocks: the alert webhook queues it
        if ended_by not in ("device", "hub"):
            record_event(self.stores, f"command.{state}", delivery.device_id, ended_by,
                         command_id=delivery.command["id"], name=delivery.command["name"])
        return record

    @staticmethod
    def _command_view(command: Document, command_id: int | None = None) -> Document:
        return {
            "id": command.get("id", command_id), "name": command["name"],
            "args": command["args"], "priority": command["priority"],
            "target": command["target"], "created_at": command["created_at"],
            "expires_at": command["expires_at"], "created_by": command.get("created_by"),
        }

    def _handout(self, delivery: Delivery) -> Document:
        """What a device receives: small, for a parser with a few KiB of RAM."""
        command = delivery.command
        return {"id": command["id"], "name": command["name"], "args": command["args"],
                "priority": command["priority"], "attempt": delivery.attempts,
                "lease_s": self.settings.lease_s, "expires_at": command["expires_at"]}

    def _delivery_view(self, delivery: Delivery) -> Document:
        return {
            **self._command_view(delivery.command), "device_id": delivery.device_id,
            "state": delivery.state, "attempts": delivery.attempts,
            "delivered_at": iso_from_epoch(delivery.delivered_at)
            if delivery.delivered_at else None,
            "lease_expires_at": iso_from_epoch(delivery.leased_until)
            if delivery.state == DELIVERED else None,
            "reason": None, "result": None, "ended_at": None, "ended_by": None, "seq": None,
        }

    @staticmethod
    def _ended_view(record: Document) -> Document:
        view = {key: record.get(key) for key in (
            "name", "args", "priority", "target", "created_at", "expires_at", "created_by",
            "device_id", "state", "attempts", "delivered_at", "reason", "result", "ended_at",
            "ended_by", "seq")}
        return {"id": record["command_id"], **view, "lease_expires_at": None}
