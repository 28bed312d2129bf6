#!/usr/bin/env python3
"""A headless Chromium for the end-to-end tests, driven by Selenium.

The Rust test sends one JSON command per line on stdin and reads one JSON
answer per line on stdout, so the assertions live with the server they test:
  {"op": "open", "url": ...}
  {"op": "js", "script": ...}                  -> {"ok": true, "value": ...}
  {"op": "wait", "script": ..., "timeout": s}   polls until the script returns
                                                a truthy value (or fails with
                                                the last value it returned)
  {"op": "click", "css": ...}
  {"op": "type", "css": ..., "text": ...}
  {"op": "erase", "css": ...}                  empties a field as a user does
                                                (select all, backspace)
  {"op": "select", "css": ..., "text": ...}    picks an option by its text
  {"op": "screenshot", "path": ...}
  {"op": "alert"}                               -> the text of an open alert, or null
  {"op": "quit"}
Needs Debian's chromium and chromium-driver, and `pip install selenium`.
"""
import json
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, UnexpectedAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def run(driver, command):
    op = command["op"]
    if op == "open":
        driver.get(command["url"])
        return None
    if op == "js":
        return driver.execute_script(command["script"])
    if op == "wait":
        deadline = time.monotonic() + command.get("timeout", 30)
        value = None
        while time.monotonic() < deadline:
            value = driver.execute_script(command["script"])
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"not within {command.get('timeout', 30)}s; last value: {value!r}")
    if op == "click":
        driver.find_element(By.CSS_SELECTOR, command["css"]).click()
        return None
    if op == "type":
        element = driver.find_element(By.CSS_SELECTOR, command["css"])
        element.clear()
        element.send_keys(command["text"])
        return None
    if op == "erase":
        # (clear() fires no input event, which the page's filters listen to)
        driver.find_element(By.CSS_SELECTOR, command["css"]).send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
        return None
    if op == "select":
        Select(driver.find_element(By.CSS_SELECTOR, command["css"])).select_by_visible_text(command["text"])
        return None
    if op == "screenshot":
        driver.save_screenshot(command["path"])
        return command["path"]
    if op == "alert":
        try:
            return driver.switch_to.alert.text
        except NoAlertPresentException:
            return None
    raise ValueError(f"unknown op {op!r}")


def main():
    driver = browser()
    try:
        print(json.dumps({"ok": True, "value": "ready"}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "quit":
                break
            try:
                answer = {"ok": True, "value": run(driver, command)}
            except UnexpectedAlertPresentException as e:
                answer = {"ok": False, "error": f"an alert opened: {e.alert_text!r}"}
            except Exception as e:  # reported to the test, which fails with it
                answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            print(json.dumps(answer), flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
