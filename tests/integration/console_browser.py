#!/usr/bin/env python3
"""console_browser.py — drives the web console (/ui) in headless Chromium.

Usage: console_browser.py URL TOKEN FAILED_WORKFLOW DLQ_ENTRY DROP_ENTRY SHOTS_DIR

tests/integration/ui_browser_spec.lua starts the server, makes the runs and
the DLQ entry, and runs this with a time bound. The browser goes through:
sign in (a wrong token first), filter failed runs, open one, see its
timeline, keyboard focus and labels, replay a DLQ entry, drop another, the
other pages, sign out. Each step
prints "ok: ..." and saves a screenshot in SHOTS_DIR; the first failed check
prints "FAIL: ..." and exits 1. Chromium may reach 127.0.0.1 only (its host
resolver maps every other name to nothing).
"""
import json
import os
import sys
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT = 20  # seconds any one step may take
# A wait's condition reads elements the console may render again meanwhile
# (a table refreshed after a filter or an action): a stale one means "not
# yet", and the condition is tried again.
STALE = (StaleElementReferenceException,)

URL, TOKEN, FAILED_WF, DLQ_ENTRY, DROP_ENTRY, SHOTS = sys.argv[1:7]
step = 0
DRIVER = None


def check(cond, what):
    if not cond:
        print("FAIL: " + what, flush=True)
        if DRIVER:
            shot(DRIVER, "failed")
        raise SystemExit(1)
    print("ok: " + what, flush=True)


def shot(driver, name):
    global step
    step += 1
    driver.save_screenshot(os.path.join(SHOTS, "%02d-%s.png" % (step, name)))


def admin_get(path):
    req = urllib.request.Request(URL + path, headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def start():
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1366,768", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-default-apps",
              "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


def main():
    os.makedirs(SHOTS, exist_ok=True)
    global DRIVER
    driver = DRIVER = start()
    try:
        run(driver)
    except TimeoutException as e:
        shot(driver, "timeout")
        print("FAIL: timed out waiting: %s" % (e.msg or "a condition"), flush=True)
        raise SystemExit(1)
    finally:
        driver.quit()


def visible(driver, css):
    return WebDriverWait(driver, WAIT, ignored_exceptions=STALE).until(
        EC.visibility_of_element_located((By.CSS_SELECTOR, css)))


def run(driver):
    wait = WebDriverWait(driver, WAIT, ignored_exceptions=STALE)
    driver.get(URL + "/ui/")
    visible(driver, "#signin-form")
    check(driver.find_element(By.ID, "nav").is_displayed() is False, "signed out, the shell shows only the sign-in form")
    shot(driver, "signin")

    # labels: every field has one, the token field is a password field
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, select')].filter(e => !e.labels || !e.labels.length)"
        ".map(e => e.id || e.name)")
    check(unlabelled == [], "every input and select has a <label> (unlabelled: %s)" % unlabelled)
    check(driver.find_element(By.ID, "token").get_attribute("type") == "password", "the token field hides what is typed")

    # a wrong token is refused and not kept
    token = driver.find_element(By.ID, "token")
    token.send_keys("not-the-token", Keys.ENTER)
    wait.until(EC.text_to_be_present_in_element((By.ID, "signin-error"), "refused"))
    check(driver.execute_script("return sessionStorage.getItem('chorus.admin_token')") is None,
          "a refused token is not stored")
    shot(driver, "signin-refused")

    # sign in with the keyboard: type, Enter
    token = driver.find_element(By.ID, "token")
    token.clear()
    token.send_keys(TOKEN, Keys.ENTER)
    visible(driver, "#page-runs")
    check(driver.execute_script("return sessionStorage.getItem('chorus.admin_token')") == TOKEN,
          "the token is kept in sessionStorage")
    check(TOKEN not in driver.current_url, "the token is not in the URL")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr[data-run]")) >= 2)
    statuses = {e.text for e in driver.find_elements(By.CSS_SELECTOR, "#runs-table tbody .badge")}
    check({"failed", "succeeded"} <= statuses, "the runs list shows failed and succeeded runs (%s)" % sorted(statuses))
    width = driver.execute_script("return document.documentElement.scrollWidth")
    check(width <= 1366, "the runs page fits 1366 px without scrolling sideways (%d px)" % width)
    shot(driver, "runs")

    # filter: failed runs only
    Select(driver.find_element(By.ID, "f-status")).select_by_value("failed")
    driver.find_element(By.CSS_SELECTOR, "#runs-filter button[type=submit]").click()
    wait.until(lambda d: "status=failed" in d.current_url)

    def only_failed(d):
        badges = d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr[data-run] .badge")
        return badges and all(b.text == "failed" for b in badges)
    wait.until(only_failed)
    rows = driver.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr[data-run]")
    check(len(rows) >= 1, "filtering on status=failed shows only failed runs (%d)" % len(rows))
    check(all(FAILED_WF in r.text for r in rows), "the failed runs are of workflow %s" % FAILED_WF)
    check(Select(driver.find_element(By.ID, "f-status")).first_selected_option.get_attribute("value") == "failed",
          "the filter keeps its value")
    shot(driver, "runs-failed")

    # open one, with the keyboard: focus its link, Enter
    link = rows[0].find_element(By.CSS_SELECTOR, "a")
    run_id = rows[0].get_attribute("data-run")
    driver.execute_script("arguments[0].focus()", link)
    link.send_keys(Keys.ENTER)
    visible(driver, "#page-run")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline li[data-kind=http]")) >= 1)
    check(run_id in driver.current_url, "the run page is at #/run/ID")
    facts = driver.find_element(By.ID, "run-facts").text
    check(run_id in facts and "failed" in facts, "the run page shows its id and status")
    http = driver.find_elements(By.CSS_SELECTOR, "#timeline li[data-kind=http]")
    check(len(http) >= 2, "the timeline shows every HTTP attempt (%d)" % len(http))
    check("503" in http[0].text and "attempt 2" in http[1].text, "attempts show their status and number")
    kinds = [li.get_attribute("data-kind") for li in driver.find_elements(By.CSS_SELECTOR, "#timeline li")]
    for kind in ["lock", "step", "sleep", "child", "event"]:
        check(kind in kinds, "the timeline shows a %s entry (%s)" % (kind, kinds))
    child = driver.find_element(By.CSS_SELECTOR, "#timeline li[data-kind=child]")
    check("noop" in child.text and "succeeded" in child.text, "the child run shows its workflow and outcome")
    check(child.find_elements(By.CSS_SELECTOR, "a[href^='#/run/']"), "the child run links to its own page")
    check("timeout" in driver.find_element(By.CSS_SELECTOR, "#timeline li[data-kind=event]").text,
          "the event wait shows it timed out")
    bars = driver.find_elements(By.CSS_SELECTOR, "#timeline li[data-kind=http] .bar")
    check(all(b.size["width"] >= 1 for b in bars), "each attempt has a bar on the waterfall")
    lefts = [b.location["x"] for b in bars]
    check(lefts == sorted(lefts), "later attempts start further right")
    check("declined" in driver.find_element(By.ID, "run-outcome").text, "the run's error is shown")
    check('"amount"' in driver.find_element(By.ID, "run-input").text, "the run's input is shown")
    shown_input = driver.find_element(By.ID, "run-input").text
    check("REDACTED" in shown_input and "4242" not in shown_input, "redacted fields stay redacted")
    enq = driver.find_elements(By.CSS_SELECTOR, "#enqueued tbody tr")
    check(len(enq) == 1 and "http" in enq[0].text, "the outbox entry the run enqueued is listed")
    check(driver.find_element(By.ID, "redrive").is_displayed(), "a failed run offers a redrive")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    check(width <= 1366, "the run page fits 1366 px without scrolling sideways (%d px)" % width)
    shot(driver, "run")

    # keyboard: the skip link comes first, focus is visible
    # (a reload keeps the session: sessionStorage lives as long as the tab)
    driver.refresh()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline li[data-kind=http]"))
    check(driver.find_element(By.ID, "page-run").is_displayed(), "a reload stays signed in, on the same run")
    ActionChains(driver).send_keys(Keys.TAB).perform()
    first = driver.switch_to.active_element
    check(first.get_attribute("class") == "skip", "Tab reaches the skip link first")
    ActionChains(driver).send_keys(Keys.TAB).perform()
    nav = driver.switch_to.active_element
    check(nav.text == "Runs", "then the page links (%r)" % nav.text)
    outline = driver.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
    check(outline not in ("none", ""), "the focused link has a visible outline (%s)" % outline)
    # the skip link moves focus to the content and stays on the page
    ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    check(driver.switch_to.active_element.get_attribute("class") == "skip", "Shift+Tab goes back to the skip link")
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    check(driver.switch_to.active_element.get_attribute("id") == "main", "Enter on the skip link focuses the content")
    check(run_id in driver.current_url and driver.find_element(By.ID, "page-run").is_displayed(),
          "and stays on the run's page")

    # the DLQ: replay the entry
    driver.find_element(By.CSS_SELECTOR, "#nav a[data-page=dlq]").click()
    visible(driver, "#page-dlq")
    row_css = "#dlq-table tbody tr[data-entry='%s']" % DLQ_ENTRY
    visible(driver, row_css)
    check("/refused" in driver.find_element(By.CSS_SELECTOR, row_css).text, "the DLQ lists the dead entry")
    shot(driver, "dlq")
    driver.find_element(By.CSS_SELECTOR, row_css + " button.replay").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "back in the outbox"))

    def replayed(_):
        e = [x for x in admin_get("/admin/dlq")["entries"] if x["id"] == DLQ_ENTRY]
        o = [x for x in admin_get("/admin/outbox")["entries"] if x["id"] == DLQ_ENTRY]
        # it is in the outbox again, or the upstream refused it again and it is back with replayed = 1
        return o or (e and e[0].get("replayed", 0) >= 1)
    wait.until(replayed)
    check(True, "Replay put the entry back in the outbox (the server says so)")
    shot(driver, "dlq-replayed")

    # drop the other one: the console asks first
    drop_css = "#dlq-table tbody tr[data-entry='%s']" % DROP_ENTRY
    visible(driver, drop_css)
    driver.find_element(By.CSS_SELECTOR, drop_css + " button.drop").click()
    wait.until(EC.alert_is_present())
    alert = driver.switch_to.alert
    check(DROP_ENTRY in alert.text, "Drop asks before deleting (%r)" % alert.text)
    alert.accept()
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "dropped"))
    wait.until(EC.invisibility_of_element_located((By.CSS_SELECTOR, drop_css)))
    check(all(x["id"] != DROP_ENTRY for x in admin_get("/admin/dlq")["entries"]),
          "Drop deleted the entry (the server says so)")

    # outbox, breakers and schedules pages load
    for page, table in [("outbox", "#outbox-table"), ("breakers", "#breakers-table"), ("schedules", "#schedules-table")]:
        driver.find_element(By.CSS_SELECTOR, "#nav a[data-page=%s]" % page).click()
        visible(driver, "#page-" + page)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, table + " tbody tr"))
        check(True, "the %s page loads" % page)
        shot(driver, page)
    row = driver.find_element(By.CSS_SELECTOR, "#schedules-table tbody tr[data-workflow=nightly]")
    check("0 3 * * *" in row.text, "the schedules page shows the nightly schedule (%s)" % row.text)

    # sign out: the token and the data are gone
    driver.find_element(By.ID, "signout").click()
    visible(driver, "#signin-form")
    check(driver.execute_script("return sessionStorage.getItem('chorus.admin_token')") is None,
          "signing out forgets the token")
    check(driver.execute_script("return document.querySelectorAll('table.grid tbody tr').length") == 0,
          "signing out clears every table")
    driver.get(URL + "/ui/#/dlq")
    visible(driver, "#signin-form")
    check(not driver.find_element(By.ID, "page-dlq").is_displayed(), "a page needs signing in again")
    shot(driver, "signed-out")

    # nothing was blocked by the CSP or failed to load
    logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and "401" not in e["message"] and "favicon" not in e["message"]]
    check(logs == [], "the browser logged no errors (%s)" % [e["message"] for e in logs])


if __name__ == "__main__":
    main()
