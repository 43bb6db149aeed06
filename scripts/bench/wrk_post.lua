-- wrk script: POST a JSON body (WRK_BODY, default {}) to the URL wrk is given.
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"
