from brewer_cli.cli import main

main()
