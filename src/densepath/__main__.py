from densepath.cli import main

main()
