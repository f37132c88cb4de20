"""Drives the query console in headless Chromium (Debian's chromium and
chromium-driver, Python selenium): loads the page, opens a table's schema,
runs a query, reads the rendered rows and counters, runs a time series and
finds its chart, and saves a screenshot. Prints one JSON object.

usage: console_chromium.py <host:port> <sql> <time-series sql> <screenshot.png>
"""
import json
import sys

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

addr, sql, series_sql, screenshot = sys.argv[1:5]
options = Options()
for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
    options.add_argument(argument)
options.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
wait = WebDriverWait(driver, 30)
try:
    driver.get(f"http://{addr}/")
    table = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#tables li[data-table]"))
    table.click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#schema td"))
    schema = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#schema td")]

    def answered(d):
        return d.find_element(By.ID, "stats").text.split(" ")[0].isdigit()

    def run(query, done=answered):
        editor = driver.find_element(By.ID, "sql")
        editor.clear()
        editor.send_keys(query)
        driver.find_element(By.ID, "run").click()
        wait.until(done)

    run(sql)
    header = [th.text.split("\n")[0] for th in driver.find_elements(By.CSS_SELECTOR, "#results thead th")]
    rows = [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    ]
    stats = driver.find_element(By.ID, "stats").text
    chart_before = driver.find_element(By.ID, "chart-box").is_displayed()

    run(series_sql)
    wait.until(lambda d: d.find_element(By.ID, "chart").is_displayed())
    series = [p.get_attribute("data-series") for p in driver.find_elements(By.CSS_SELECTOR, "#chart polyline")]
    points = [len((p.get_attribute("points") or "").split()) for p in driver.find_elements(By.CSS_SELECTOR, "#chart polyline")]
    driver.save_screenshot(screenshot)

    run("SELECT nope FROM clicks", lambda d: d.find_element(By.ID, "error").is_displayed())
    error = driver.find_element(By.ID, "error").text
    print(json.dumps({
        "schema": schema, "header": header, "rows": rows, "stats": stats, "chart_for_a_table": chart_before,
        "series": series, "points": points, "error": error, "title": driver.title,
    }))
finally:
    driver.quit()
