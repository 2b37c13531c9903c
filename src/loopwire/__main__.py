from loopwire.cli import app

app()
