"""gengate's command line, a client of the service's gRPC API in the spirit of Ollama's CLI: cli.main parses the
command line, cli.commands runs each command, cli.rpc reaches the service, cli.display writes what users see."""
