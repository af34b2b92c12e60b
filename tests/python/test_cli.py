"""The quiver command line: errors reported once with their cause, progress, formats."""
import os

from conftest import quiver, run


def test_bad_inputs_name_their_cause(fixtures, tmp_path):
    cases = {
        f"SELECT image_decode(content) FROM read_images('{fixtures}/bad/')": "cannot decode image",
        f"SELECT * FROM read_images('{fixtures}/empty/')": "no image files",
        f"SELECT * FROM read_images('{tmp_path}/does/not/exist/')": "does not exist",
        "SELECT image_resize(image_decode(X'00'), 'wide', 2)": "argument 2 must be an integer",
        f"COPY (SELECT 1 AS x) TO '{tmp_path}/o/' STORED AS TFRECORD OPTIONS (compression 'zstd')": "compression",
    }
    for sql, expected in cases.items():
        proc = quiver(sql, check=False)
        assert proc.returncode != 0, sql
        assert expected in proc.stderr, (sql, proc.stderr)
        # Reported once, on one line starting with "error:".
        assert proc.stderr.startswith("error: ") and "\nerror:" not in proc.stderr, proc.stderr


def test_skipping_undecodable_images_is_counted(fixtures, tmp_path):
    out = tmp_path / "out"
    proc = quiver(f"COPY (SELECT label, image_decode(content, 'null') AS image FROM read_images('{fixtures}/bad/')) "
                  f"TO '{out}/' STORED AS TFRECORD", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 undecodable images" in proc.stderr, proc.stderr
    for name in ("not_an_image.jpg", "truncated.jpg"):
        assert f"skipped file://{fixtures}/bad/broken/{name}: cannot decode image" in proc.stderr, \
            proc.stderr


COUNTS_TABLE = """\
+--------+---+
| label  | n |
+--------+---+
| cat    | 3 |
| coffee | 3 |
| rocket | 3 |
+--------+---+
3 rows
"""
ANSWER_TABLE = """\
+--------+
| answer |
+--------+
| 42     |
+--------+
1 row
"""


def test_sql_file_and_table_output(fixtures, tmp_path):
    script = tmp_path / "q.sql"
    script.write_text(f"SELECT label, count(*) AS n FROM read_images('{fixtures}/photos/') GROUP BY label ORDER BY label;")
    proc = run([os.environ["QUIVER_BIN"], "sql", "-f", str(script)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == COUNTS_TABLE, proc.stdout
    assert "listed 9 files" in proc.stderr


def test_interactive_shell_runs_statements_across_lines(fixtures):
    script = (f"SELECT label, count(*) AS n\n  FROM read_images('{fixtures}/photos/')\n"
              " GROUP BY label ORDER BY label;\nSELECT image_decode(42);\nSELECT 40 + 2 AS answer;\n\\q\n")
    proc = run([os.environ["QUIVER_BIN"], "sql"], input=script, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == COUNTS_TABLE + ANSWER_TABLE, proc.stdout
    # An error does not end the session.
    assert "image_decode: argument 1 must be encoded image bytes" in proc.stderr, proc.stderr
