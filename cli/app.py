"""The `chanscope` command: assembles the subcommands and turns library errors into one-line messages."""

from __future__ import annotations

import sys

import typer

from chanscope.errors import ChanscopeError
from ._console import fail, handle_errors
from .activations import activations_command
from .eval import eval_command
from .train import train_command

app = typer.Typer(name="chanscope", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Channel-wise activation studies of adversarially trained CNNs (CIFS, ICML 2021).")
app.command("train")(handle_errors(train_command))
app.command("eval")(handle_errors(eval_command))
app.command("activations")(handle_errors(activations_command))


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    """Channel-wise activation studies of adversarially trained CNNs (CIFS, ICML 2021)."""
    if version:
        from chanscope import __version__

        typer.echo(f"chanscope {__version__}")
        raise typer.Exit(0)


def main() -> None:
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except ChanscopeError as e:
        fail(str(e))
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
