from worldflow.cli import main

main()
