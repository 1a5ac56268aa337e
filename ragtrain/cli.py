"""`ragtrain`: fit, impute, evaluate, bench."""

import typer

app = typer.Typer(help="Train and apply ragsnv models.", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)
