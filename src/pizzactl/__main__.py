from pizzactl.cli import main

main()
