#!/usr/bin/env python3
"""edges probe: SIGKILL `chorus serve` at random moments while clients send
keyed requests (sync and Prefer: respond-async) to a saga with ctx.lock +
pcall, chorus.all, ctx.call, ctx.later, against build/mock-upstream; cancel
runs right after restarts (while recovery runs). Then audit:

  * every acknowledged key maps to one run id (retries never start a 2nd run)
  * every effect key at the mock belongs to a known run (no duplicate run)
  * with the idempotent mock, every effect key was done once
  * no run left 'running' once the outbox has drained
  * GET /admin/runs listings agree with GET /runs/ID for every run
  * redrive of the failed runs answers 202 and ends them again
  * the server exits 0 on SIGTERM, and no start of it printed a sanitizer
    report (run against build-asan/ with --build build-asan)
  * `chorus data verify` is clean after a SIGTERM

  python3 tests/soak/edges/probe.py [--kills 40] [--clients 4] [--keep]

Loopback only; every process bounded by `timeout`. Exit 1 on a violation.
"""
import argparse, json, os, random, shutil, signal, subprocess, sys, tempfile, threading, time
import urllib.request, urllib.error

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
ADMIN = "s3cret"

ap = argparse.ArgumentParser()
ap.add_argument("--kills", type=int, default=40)
ap.add_argument("--clients", type=int, default=4)
ap.add_argument("--build", default="build")
ap.add_argument("--keep", action="store_true")
ap.add_argument("--seed", type=int, default=None)
args = ap.parse_args()
seed = args.seed if args.seed is not None else int(time.time())
random.seed(seed)
T0 = time.monotonic()

def log(msg):
    print("[edges %6.1fs] %s" % (time.monotonic() - T0, msg), flush=True)

def http(method, url, body=None, headers=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()

def jget(url, timeout=30):
    st, _, b = http("GET", url, headers={"Authorization": "Bearer " + ADMIN}, timeout=timeout)
    try:
        return st, json.loads(b)
    except Exception:
        return st, None

TMP = tempfile.mkdtemp(prefix="chorus-edges.")
SCRIPTS, DATA = os.path.join(TMP, "scripts"), os.path.join(TMP, "data")
os.makedirs(SCRIPTS); os.makedirs(DATA)
for f in ("saga.lua", "child.lua", "later.lua"):
    shutil.copy(os.path.join(HERE, f), SCRIPTS)
CHORUS = os.path.join(ROOT, args.build, "chorus")
LIMIT = 1800

mock_out = open(os.path.join(TMP, "mock.out"), "w+")
mock = subprocess.Popen(["timeout", "-s", "KILL", str(LIMIT), os.path.join(ROOT, "build", "mock-upstream"),
                         "--max-seconds", str(LIMIT)], stdout=mock_out, stderr=subprocess.DEVNULL)
for _ in range(200):
    mock_out.seek(0); t = mock_out.read()
    if "listening" in t:
        break
    time.sleep(0.05)
MOCK = "http://" + t.split("listening ")[1].split()[0]
CONF = os.path.join(TMP, "edges.conf.lua")
with open(CONF, "w") as f:
    f.write("""return {
  admin_token = %r, access_log = false,
  outbox = { base = 0.05, cap = 0.5, poll = 0.02 },
  storage = { recovery_batch = 3 },
  upstreams = {
    ledger = { base_url = %r },
    ledger_reject = { base_url = %r },
    down = { base_url = %r, retry = { attempts = 2, base = 0.02, cap = 0.05 } },
  },
}
""" % (ADMIN, MOCK + "?idempotent=1&delay=30", MOCK + "?idempotent=1&status=422", MOCK + "?idempotent=1&status=503"))

srv = {"proc": None, "port": 0, "n": 0}

def start_server(pause=None):
    for attempt in range(40):
        srv["n"] += 1
        out = os.path.join(TMP, "serve-%d.out" % srv["n"])
        err = os.path.join(TMP, "serve-%d.err" % srv["n"])
        env = dict(os.environ)
        if pause:
            env["CHORUS_TEST_RECOVERY_PAUSE"] = str(pause)
        p = subprocess.Popen([CHORUS, "serve", "--config", CONF, "--scripts", SCRIPTS, "--data", DATA,
                              "--listen", "127.0.0.1:%d" % srv["port"]], stdout=open(out, "w"),
                             stderr=open(err, "w"), env=env)
        for _ in range(600):
            t = open(out).read()
            if "listening on http://127.0.0.1:" in t:
                srv["port"] = int(t.split("listening on http://127.0.0.1:")[1].split()[0].strip("/"))
                srv["proc"], srv["url"] = p, "http://127.0.0.1:%d" % srv["port"]
                return p
            if p.poll() is not None:
                break
            time.sleep(0.05)
        if p.poll() is None:
            p.kill()
        p.wait()
        log("start %d failed: %s" % (attempt, open(err).read()[-300:]))
        time.sleep(0.3)
    raise SystemExit("chorus serve did not start")

def kill_server():
    p = srv["proc"]
    p.send_signal(signal.SIGKILL)
    p.wait()
    srv["proc"] = None

# --- clients -----------------------------------------------------------------
lock = threading.Lock()
acks = {}        # key -> {"run": id, "status": http status, "async": bool, "order": body}
runs_by_key = {} # key -> set of run ids seen in answers
stop = threading.Event()
counter = [0]
cancels = []     # (run id, answer status)

def client(cid):
    rnd = random.Random(seed * 100 + cid)
    while not stop.is_set():
        with lock:
            counter[0] += 1
            n = counter[0]
        key = "edge-%d-%d" % (seed, n)
        order = {"buyer": "b%d" % rnd.randint(1, 3), "n": n, "items": rnd.randint(1, 3)}
        r = rnd.random()
        if r < 0.15:
            order["fail_at"] = rnd.randint(1, order["items"])
        elif r < 0.25:
            order["fail_end"] = True
        asy = rnd.random() < 0.5
        h = {"Idempotency-Key": key}
        if asy:
            h["Prefer"] = "respond-async"
        tries = 0
        while True:
            tries += 1
            if tries > 2000:
                with lock:
                    acks[key] = {"run": None, "status": "gave up", "async": asy, "order": order}
                break
            url = srv.get("url")
            try:
                st, hd, b = http("POST", url + "/workflows/saga", order, h, timeout=60)
            except Exception:
                time.sleep(0.1)
                continue
            rid = hd.get("X-Run-Id") or hd.get("x-run-id")
            if st == 202:
                try:
                    rid = json.loads(b).get("run_id")
                except Exception:
                    pass
            if rid:
                with lock:
                    runs_by_key.setdefault(key, set()).add(rid)
            # 409 is "in flight", except the replay of a cancelled run's end
            replayed = (hd.get("Idempotent-Replayed") or hd.get("idempotent-replayed")) == "true"
            if st == 409 and replayed:
                try:
                    rid = json.loads(b).get("run_id") or rid
                except Exception:
                    pass
            elif st in (409, 503) or st >= 502 and st != 504:
                time.sleep(0.1)
                continue
            with lock:
                acks[key] = {"run": rid, "status": st, "async": asy, "order": order,
                             "body": b.decode(errors="replace")[:300]}
            break
        time.sleep(rnd.uniform(0, 0.05))

threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(args.clients)]
start_server()
log("seed %d, temp %s, mock %s, server %s" % (seed, TMP, MOCK, srv["url"]))
for t in threads:
    t.start()

problems = []
def problem(msg):
    problems.append(msg)
    log("PROBLEM: " + msg)

for k in range(args.kills):
    time.sleep(random.uniform(0.2, 2.5))
    kill_server()
    racing = k % 3 == 0
    start_server(pause=0.05 if racing else None)
    if racing:
        # cancel async runs while recovery resumes them
        # the unfinished runs recovery is resuming (saga, child or later)
        st, rr = jget(srv["url"] + "/admin/runs?status=running&limit=50")
        cands = [r["id"] for r in (rr or {}).get("runs", [])]
        random.shuffle(cands)
        cands = cands[:6]
        for rid in cands:
            try:
                st, _, b = http("DELETE", srv["url"] + "/runs/" + rid, headers={"Authorization": "Bearer " + ADMIN})
                cancels.append((rid, st))
            except Exception as e:
                cancels.append((rid, str(e)))
    if k % 10 == 9:
        log("kill %d, %d keys acked" % (k + 1, len(acks)))

stop.set()
for t in threads:
    t.join(timeout=120)
log("%d kills done, %d keys acked, %d cancels sent" % (args.kills, len(acks), len(cancels)))

# --- drain ---------------------------------------------------------------------
U = srv["url"]
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    _, ob = jget(U + "/admin/outbox")
    _, rr = jget(U + "/admin/runs?status=running&limit=1000")
    depth = ob and ob.get("depth")
    running = rr and len(rr.get("runs", []))
    if depth == 0 and running == 0:
        break
    time.sleep(0.5)
else:
    problem("not drained after 300 s: outbox depth %s, running %s" % (depth, running))

# --- audit ---------------------------------------------------------------------
def all_listed(status=None):
    out, cur = [], None
    while True:
        q = "/admin/runs?limit=1000" + ("&status=" + status if status else "") + ("&cursor=" + cur if cur else "")
        st, page = jget(U + q)
        if st != 200:
            problem("GET %s: %s" % (q, st)); return out
        out += page["runs"]
        cur = page.get("next_cursor")
        if not cur:
            return out

listed = all_listed()
by_id = {}
for r in listed:
    if r["id"] in by_id:
        problem("run %s listed twice" % r["id"])
    by_id[r["id"]] = r
for st in ("running", "succeeded", "failed", "timed_out", "compensated", "cancelled"):
    for r in all_listed(st):
        if by_id.get(r["id"], {}).get("status") != st:
            problem("run %s in the %s index but listed as %s" % (r["id"], st, by_id.get(r["id"], {}).get("status")))
n_by = {}
for rid, r in by_id.items():
    st, rec = jget(U + "/runs/" + rid)
    if st != 200 or not rec:
        problem("GET /runs/%s: %s" % (rid, st)); continue
    n_by[rec["status"]] = n_by.get(rec["status"], 0) + 1
    if rec["status"] != r["status"]:
        problem("run %s: listed %s, record %s" % (rid, r["status"], rec["status"]))
    if rec["status"] == "running":
        problem("run %s (%s) still running after the drain" % (rid, rec["workflow"]))
log("runs by status: %s" % n_by)

# one run per key, every ack has a run that is final
for key, ids in runs_by_key.items():
    if len(ids) > 1:
        problem("key %s answered with %d run ids: %s" % (key, len(ids), sorted(ids)))
saga_runs = {r["key"]: r for r in listed if r["workflow"] == "saga"}
for key, a in acks.items():
    if a["status"] == "gave up":
        problem("key %s never acknowledged" % key); continue
    r = saga_runs.get(key)
    if not r:
        problem("key %s acked (%s) but no run lists it" % (key, a["status"])); continue
    if a["run"] and a["run"] != r["id"]:
        problem("key %s acked run %s, listing has %s" % (key, a["run"], r["id"]))
    o = a["order"]
    want = {"compensated"} if "fail_at" in o else {"failed"} if o.get("fail_end") else {"succeeded"}
    want.add("cancelled")
    if r.get("error_kind") == "cancelled":
        want.add("failed")  # its ctx.call child was cancelled: ctx.call raised that (README)
    if r["status"] not in want:
        problem("key %s: run %s ended %s, expected %s" % (key, r["id"], r["status"], sorted(want)))
keys_listed = {}
for r in listed:
    if r["workflow"] == "saga":
        keys_listed.setdefault(r["key"], []).append(r["id"])
for k, ids in keys_listed.items():
    if len(ids) > 1:
        problem("key %s has %d saga runs" % (k, len(ids)))

# effects at the mock
_, stats = jget(MOCK + "/__stats")
effects = stats.get("effects", {})
known = set(by_id)
doubled = {k: c for k, c in effects.items() if c > 1}
for k, c in doubled.items():
    problem("effect %s done %d times" % (k, c))
orphans = [k for k in effects if k.split(":")[0] not in known]
for k in orphans[:20]:
    problem("effect %s belongs to no known run" % k)
log("effects: %d keys, %d doubled, %d orphaned, mock replays %s" % (len(effects), len(doubled), len(orphans),
                                                                    stats.get("replayed")))

# redrive the failed runs (fail_end ones fail again at the down upstream)
failed = [r for r in listed if r["status"] == "failed"]
red_ok = 0
for r in failed[:20]:
    st, _, b = http("POST", U + "/admin/runs/%s/redrive" % r["id"], headers={"Authorization": "Bearer " + ADMIN})
    if st != 202:
        problem("redrive %s (%s): %s %s" % (r["id"], r["workflow"], st, b[:200]))
        continue
    for _ in range(200):
        _, rec = jget(U + "/runs/" + r["id"])
        if rec and rec["status"] != "running":
            break
        time.sleep(0.1)
    if not rec or rec["status"] == "running" or not rec.get("redrives"):
        problem("redriven %s did not end or has no redrives: %s" % (r["id"], rec and rec["status"]))
    else:
        red_ok += 1
_, stats2 = jget(MOCK + "/__stats")
for k, c in stats2.get("effects", {}).items():
    if c > 1 and k not in doubled:
        problem("effect %s done %d times after redrive" % (k, c))
log("redrive: %d of %d failed runs redriven and ended again" % (red_ok, min(len(failed), 20)))

# stop and verify
srv["proc"].send_signal(signal.SIGTERM)
try:
    rc = srv["proc"].wait(timeout=60)
    if rc != 0:
        problem("server exited %d on SIGTERM" % rc)
except subprocess.TimeoutExpired:
    srv["proc"].kill(); problem("server did not stop on SIGTERM")
# a sanitized build (--build build-asan) reports a memory or UB error on
# stderr; a server SIGKILLed mid-report still left its first lines there
for n in range(1, srv["n"] + 1):
    err = os.path.join(TMP, "serve-%d.err" % n)
    text = open(err, errors="replace").read() if os.path.exists(err) else ""
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        if marker in text:
            at = text.index(marker)
            problem("server start %d: %s" % (n, text[at:at + 300]))
            break
v = subprocess.run(["timeout", "-s", "KILL", "300", CHORUS, "data", "verify", "--data", DATA],
                   capture_output=True, text=True)
if v.returncode != 0:
    problem("data verify: rc %d %s %s" % (v.returncode, v.stdout[-500:], v.stderr[-500:]))
log("data verify rc %d: %s" % (v.returncode, v.stdout.strip().splitlines()[-1:] if v.stdout.strip() else ""))

# a cancel answered 202 is on disk: its run ends cancelled
for rid, st in cancels:
    if st == 202 and by_id.get(rid, {}).get("status") != "cancelled":
        problem("cancel of %s answered 202, run ended %s" % (rid, by_id.get(rid, {}).get("status")))
cancel_codes = {}
for _, st in cancels:
    cancel_codes[st] = cancel_codes.get(st, 0) + 1
mock.send_signal(signal.SIGTERM); mock.wait()
print("edges: %s seed %d, %d kills, %d keys acked, %d runs, %d effects, cancels %s, %d problems" % (
    "PASS" if not problems else "FAIL", seed, args.kills, len(acks), len(by_id), len(effects), cancel_codes,
    len(problems)))
if args.keep or problems:
    print("edges: kept " + TMP)
else:
    shutil.rmtree(TMP, ignore_errors=True)
sys.exit(1 if problems else 0)
