"""The front end: command line, control socket, console, reports, trace, layout."""
