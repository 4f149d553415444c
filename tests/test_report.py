"""Results pages: rerunning a command rewrites its figures and keeps what people wrote by hand."""
from experiments.report import NOTES, write_page, write_section


def test_rewriting_a_page_keeps_its_hand_written_notes(tmp_path):
    page = tmp_path / "page.md"
    write_page(page, "Speed", "make bench-train", "| old table |")
    page.write_text(page.read_text() + f"\n{NOTES}\n\nThe old table says the default is faster.\n")
    write_page(page, "Speed", "make bench-train", "| new table |")
    text = page.read_text()
    assert "| new table |" in text and "| old table |" not in text
    assert text.endswith(f"{NOTES}\n\nThe old table says the default is faster.\n")
    assert text.startswith("# Speed\n\nWritten by `make bench-train`")


def test_a_page_without_notes_is_the_command_output_alone(tmp_path):
    page = tmp_path / "page.md"
    write_page(page, "Speed", "make bench", "| table |")
    assert page.read_text() == "# Speed\n\nWritten by `make bench`; rerun it to measure again.\n\n| table |\n"


def test_one_section_is_replaced_and_the_others_kept(tmp_path):
    page = tmp_path / "page.md"
    write_page(page, "Serving", "make bench", "## Throughput\n\nfast\n\n## Formats\n\nold formats\n\n## Load\n\nheavy")
    write_section(page, "Serving", "make bench", "## Formats\n\nnew formats\n")
    assert page.read_text() == ("# Serving\n\nWritten by `make bench`; rerun it to measure again.\n\n"
                                "## Throughput\n\nfast\n\n## Formats\n\nnew formats\n\n## Load\n\nheavy\n")
    # the last section, followed by notes
    page.write_text(page.read_text() + f"\n{NOTES}\nkept\n")
    write_section(page, "Serving", "make bench", "## Load\n\nlight")
    assert page.read_text().endswith("## Formats\n\nnew formats\n\n## Load\n\nlight\n\n" + NOTES + "\nkept\n")


def test_a_section_new_to_the_page_makes_the_page(tmp_path):
    page = tmp_path / "page.md"
    write_section(page, "Serving", "make bench", "## Formats\n\nformats")
    assert page.read_text() == "# Serving\n\nWritten by `make bench`; rerun it to measure again.\n\n## Formats\n\nformats\n"


def test_a_section_new_to_an_existing_page_is_added_and_the_page_kept(tmp_path):
    page = tmp_path / "page.md"
    write_page(page, "Quality", "make evaluate", "## Targets\n\nall met")
    write_section(page, "Quality", "make evaluate", "## One hand\n\nsteady")
    assert page.read_text().endswith("## Targets\n\nall met\n\n## One hand\n\nsteady\n")
    page.write_text(page.read_text() + f"\n{NOTES}\nkept\n")
    write_section(page, "Quality", "make evaluate", "## Other\n\nnew")
    assert page.read_text().endswith("## One hand\n\nsteady\n\n## Other\n\nnew\n\n" + NOTES + "\nkept\n")
