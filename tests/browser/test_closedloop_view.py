"""The closedloop view in the real Airflow UI, in a real browser: logged in through
Airflow's form, the "closedloop" entry of the navigation opens the view inside the UI
(an iframe of the plugin's app, authenticated by the UI's cookie), which lists the use
case and, one click on, shows the champion's version."""

from __future__ import annotations

from closedloop.core import links

USECASE = "hotel_bookings"


def test_the_nav_view_shows_the_usecase_and_its_champion(page, screenshot):
    page.goto("/")
    entry = page.locator('a[href$="/plugin/closedloop"]').first
    entry.wait_for()
    entry.click()
    page.wait_for_url("**/plugin/closedloop")
    frame_element = page.locator(f'iframe[src*="{links.APP_PREFIX}/"]')
    frame_element.wait_for()
    view = page.frame_locator(f'iframe[src*="{links.APP_PREFIX}/"]')
    usecase_link = view.locator("a.usecase", has_text=USECASE)
    usecase_link.wait_for()
    screenshot(page, "index")

    usecase_link.click()
    champion = view.locator("tr.alias-champion")
    champion.wait_for()
    assert "v1" in champion.inner_text()
    assert view.locator("#usecase").inner_text() == USECASE
    assert view.locator("svg .drift-share").count() == 1
    assert view.locator("#ledger").inner_text().count("promote") == 1
    screenshot(page, "usecase")


def test_the_view_refuses_a_browser_that_is_not_logged_in(browser, ui_world):
    _, airflow = ui_world
    context = browser.new_context(base_url=airflow.base_url)
    try:
        answer = context.new_page().goto(f"{links.APP_PREFIX}/usecases/{USECASE}")
        assert answer is not None and answer.status in (401, 403)
    finally:
        context.close()
