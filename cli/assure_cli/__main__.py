from assure_cli.main import main

main()
