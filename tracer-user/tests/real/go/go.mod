module tcplinger.test/real

go 1.19
