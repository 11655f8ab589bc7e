"""One module per ``qlabref`` subcommand (discovered by ``qlabref.cli``)."""
